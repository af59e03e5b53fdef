"""Gated DeltaNet kernels: the chunked rule (Pallas WY / fwd_h / output / bwd_dhu) and its context-parallel form."""
from kernels.gdn.chunk import chunk_gated_delta_rule
from kernels.gdn.cp import context_parallel_gated_delta_rule, conv_halo

__all__ = ["chunk_gated_delta_rule", "context_parallel_gated_delta_rule", "conv_halo"]
