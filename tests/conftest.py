"""Shared fixtures: a unique name prefix per run and cleanup that runs even on failure."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.cleanup import PREFIX, remove_test_objects

RUN_PREFIX = f"{PREFIX}{secrets.token_hex(2)}-"


@pytest.fixture(scope="session")
def run_prefix() -> Iterator[str]:
    """Names of VMs made by this test run start with this; all are removed at the end."""
    yield RUN_PREFIX
    remove_test_objects(prefix=RUN_PREFIX)


@pytest.fixture
def unique_name(run_prefix: str) -> Iterator[str]:
    """A fresh VM name for one test."""
    yield f"{run_prefix}{secrets.token_hex(3)}"
