"""Tests that need what a machine may lack (a SLURM cluster, DeepSpeed) skip without it, saying why and how to get
it -- unless ``FLOWRL_REQUIRE_<NAME>=1`` is set (CI sets ``FLOWRL_REQUIRE_SLURM`` and ``FLOWRL_REQUIRE_DEEPSPEED``,
see ``.ci/run``): then the same test fails, so CI can never pass by skipping them."""
from __future__ import annotations

import os

import pytest


def required(name: str) -> bool:
    """Whether ``FLOWRL_REQUIRE_<NAME>=1`` asks for ``name`` to be present."""
    return os.environ.get(f"FLOWRL_REQUIRE_{name.upper()}") == "1"


def need(name: str, missing: str | None) -> None:
    """Nothing when ``missing`` is None; else skip the test with ``missing`` (why ``name`` is unavailable and how
    to get it), or fail it when ``name`` is required."""
    if missing is None:
        return
    if required(name):
        pytest.fail(f"{missing} (FLOWRL_REQUIRE_{name.upper()}=1: these tests must run here)", pytrace=False)
    pytest.skip(missing)
