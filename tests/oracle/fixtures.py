"""pytest fixture `oracle`: case name -> the HF oracle's outputs (see tests/oracle/__init__.py).

Import it into a test module with `from oracle.fixtures import oracle  # noqa: F401`.
"""
from __future__ import annotations

import os

import pytest

from oracle import OracleUnavailable, run_oracle


@pytest.fixture(scope="session")
def oracle(tmp_path_factory):
    # Under xdist every worker has its own basetemp; their parent is shared by the whole run.
    base = tmp_path_factory.getbasetemp()
    cache = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    results = {}

    def get(case: str) -> dict:
        if case not in results:
            try:
                results[case] = run_oracle(case, str(cache))
            except OracleUnavailable as e:
                if os.environ.get("A1JAX_REQUIRE_ORACLE") == "1":
                    pytest.fail(f"A1JAX_REQUIRE_ORACLE=1 but {e}", pytrace=False)
                pytest.skip(str(e))
        return results[case]

    return get
