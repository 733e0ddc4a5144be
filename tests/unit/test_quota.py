"""Quota arithmetic: what fits, and what the refusal says."""

from __future__ import annotations

import pytest

from dockvisor.domain.quota import Limits, Resources, check_room
from dockvisor.domain.sizes import GiB
from dockvisor.errors import OutOfCapacity

LIMITS = Limits(vcpus=8, memory=8 * GiB, disk=None, vms=4)


def test_a_request_that_fits_passes() -> None:
    check_room(
        "team",
        LIMITS,
        Resources(vcpus=6, memory=4 * GiB, vms=3),
        Resources(vcpus=2, memory=4 * GiB, disk=100 * GiB, vms=1),
    )


def test_the_refusal_names_the_set_the_resource_and_what_is_left() -> None:
    with pytest.raises(OutOfCapacity) as caught:
        check_room("team", LIMITS, Resources(vcpus=7), Resources(vcpus=2))
    assert str(caught.value) == (
        "resource set 'team' has 1 of vCPUs left (7 of 8 used); this needs 2"
    )
    with pytest.raises(OutOfCapacity, match="has 1GiB of memory left"):
        check_room("team", LIMITS, Resources(memory=7 * GiB), Resources(memory=2 * GiB))


def test_giving_back_always_fits_even_over_the_limit() -> None:
    check_room("team", LIMITS, Resources(vcpus=12), Resources(vcpus=-2))


def test_resources_add_and_subtract() -> None:
    a, b = Resources(1, 2, 3, 4), Resources(1, 1, 1, 1)
    assert a + b == Resources(2, 3, 4, 5) and a - b == Resources(0, 1, 2, 3)
