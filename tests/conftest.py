"""Shared fixtures: a unique name prefix per run and cleanup that runs even on failure."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.cleanup import PREFIX, park_spares, remove_test_objects, restore_spares

RUN_PREFIX = f"{PREFIX}{secrets.token_hex(2)}-"


@pytest.fixture(scope="session", autouse=True)
def run_prefix() -> Iterator[str]:
    """Names of VMs made by this test run start with this; all are removed at the end.
    Warm spares the host keeps of the built-in template (`make demo` keeps one) are
    set aside for the run, so that every test boots as it says (tests/e2e/test_warm.py
    makes its own), and their count is given back at the end (`image build` remakes
    them)."""
    kept = park_spares()
    try:
        yield RUN_PREFIX
    finally:
        remove_test_objects(prefix=RUN_PREFIX)
        restore_spares(kept)


@pytest.fixture
def unique_name(run_prefix: str) -> Iterator[str]:
    """A fresh VM name for one test."""
    yield f"{run_prefix}{secrets.token_hex(3)}"
