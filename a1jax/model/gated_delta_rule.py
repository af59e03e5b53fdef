"""The gated delta rule the model runs: the pure-JAX token scan and chunked form, which live with the kernels'
references (kernels/reference/gated_delta_rule.py) so that kernels/ depends on nothing in a1jax."""
from kernels.reference.gated_delta_rule import (  # noqa: F401
    gated_delta_rule_chunked, gated_delta_rule_scan, segment_starts)
