"""pytest fixture `oracle`: case name -> the HF oracle's outputs (see tests/oracle/__init__.py), and
`oracle_or_skip`, the rule for a missing oracle venv wherever a test runs the oracle.

Import it into a test module with `from oracle.fixtures import oracle  # noqa: F401`.
"""
from __future__ import annotations

import contextlib
import os

import pytest

from oracle import OracleUnavailable, run_oracle


@contextlib.contextmanager
def oracle_or_skip(unavailable: type = OracleUnavailable):
    """A block that needs the oracle venv: without it the test skips, or fails under A1JAX_REQUIRE_ORACLE=1 (CI),
    so the HF comparison is never a silent skip there. `unavailable`: the class as the caller's code imported it
    (benchmarks reach this package as `tests.oracle`, the tests as `oracle`: two module objects)."""
    try:
        yield
    except unavailable as e:
        if os.environ.get("A1JAX_REQUIRE_ORACLE") == "1":
            pytest.fail(f"A1JAX_REQUIRE_ORACLE=1 but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    # Under xdist every worker has its own basetemp; their parent is shared by the whole run.
    base = tmp_path_factory.getbasetemp()
    cache = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    results = {}

    def get(case: str) -> dict:
        if case not in results:
            with oracle_or_skip():
                results[case] = run_oracle(case, str(cache))
        return results[case]

    return get
