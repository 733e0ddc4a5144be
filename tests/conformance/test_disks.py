"""Disks as a resource, held to the contract on every adapter connection the suite
reaches: a VM made with a bigger disk than its template's, refusals that leave nothing
behind, growing a stopped and a running VM's disk, and what a revert does to a disk
grown since its snapshot.

The connections, their templates and the running VM are test_contract.py's fixtures
(one of each per adapter family for this module). Where an adapter lacks DISK_GROWTH,
LIVE_DISK_GROWTH or SNAPSHOTS the test asserts that it says so (Unsupported).
Sizes are whole GiB: XAPI's storage rounds a disk up to its 2 MiB VHD block.
"""

from __future__ import annotations

import pytest

from dockvisor.domain.model import Capability, DiskMode, PowerState
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.errors import InvalidInput, OutOfCapacity, Unsupported
from tests.conformance.test_contract import Env, env, running_vm

__all__ = ["env", "running_vm"]  # the fixtures this module shares with test_contract.py


def bigger_disk(env: Env) -> int:
    """A size above the template's disk, in whole GiB."""
    return (env.driver.get_template(env.template).disk_size // GiB + 2) * GiB


# -- making a VM with its disk's size -----------------------------------------------


@pytest.mark.parametrize("mode", list(DiskMode))
def test_create_with_a_bigger_disk_than_the_templates(env: Env, mode: DiskMode) -> None:
    name = env.name()
    before = env.harness.disks()
    size = bigger_disk(env)
    vm = env.driver.create_vm(env.spec(name, disk_size=size, disk_mode=mode))
    assert vm.disk_size == size and vm.disk_mode is mode
    assert vm.power_state is PowerState.STOPPED
    assert env.driver.get_vm(name).disk_size == size
    assert len(env.disks_of(name)) == 1
    env.driver.delete_vm(name)
    assert env.harness.disks() == before


def test_create_without_a_disk_size_gives_the_templates_default(env: Env) -> None:
    """The size the template's publisher says suits its VMs, else its disk's own."""
    name = env.name()
    template = env.driver.get_template(env.template)
    vm = env.driver.create_vm(env.spec(name))
    assert vm.disk_size == max(template.disk_size, template.sizes.default_disk or 0)
    env.driver.delete_vm(name)


def test_create_below_the_templates_disk_is_refused_and_leaves_nothing(env: Env) -> None:
    name = env.name()
    before = env.harness.disks(), env.names()
    smaller = env.driver.get_template(env.template).disk_size - 2 * MiB
    with pytest.raises(InvalidInput, match=env.template):
        env.driver.create_vm(env.spec(name, disk_size=smaller))
    assert (env.harness.disks(), env.names()) == before


@pytest.mark.parametrize("mode", list(DiskMode))
def test_create_beyond_the_free_storage_is_refused_and_leaves_nothing(
    env: Env, mode: DiskMode
) -> None:
    free = env.driver.host_info().storage_free
    assert free is not None, "every adapter here tells its storage's free space"
    name = env.name()
    before = env.harness.disks(), env.names()
    size = bigger_disk(env) + (free // GiB + 1) * GiB
    with pytest.raises(OutOfCapacity):
        env.driver.create_vm(env.spec(name, disk_size=size, disk_mode=mode))
    assert (env.harness.disks(), env.names()) == before


# -- growing a VM's disk ------------------------------------------------------------


def test_grow_the_disk_of_a_stopped_vm(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    vm = env.driver.create_vm(env.spec(name))
    size = vm.disk_size + GiB
    if Capability.DISK_GROWTH not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.grow_disk(name, size)
    else:
        grown = env.driver.grow_disk(name, size)
        assert grown.disk_size == size and grown.power_state is PowerState.STOPPED
        assert env.driver.get_vm(name).disk_size == size
        started = env.driver.start_vm(name)  # it boots with its grown disk
        assert started.disk_size == size
        env.driver.force_off(name)
    env.driver.delete_vm(name)
    assert env.harness.disks() == before


def test_grow_the_disk_of_a_running_vm(env: Env, running_vm: str) -> None:
    """Live where the adapter declares LIVE_DISK_GROWTH, else refused: stop it first."""
    vm = env.driver.get_vm(running_vm)
    assert vm.power_state is PowerState.RUNNING
    size = vm.disk_size + GiB
    if Capability.LIVE_DISK_GROWTH not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.grow_disk(running_vm, size)
        assert env.driver.get_vm(running_vm).disk_size == vm.disk_size
        return
    grown = env.driver.grow_disk(running_vm, size)
    assert grown.disk_size == size and grown.power_state is PowerState.RUNNING
    assert env.driver.get_vm(running_vm).disk_size == size


def test_shrinking_is_refused_and_the_same_size_changes_nothing(env: Env) -> None:
    name = env.name()
    size = bigger_disk(env)
    env.driver.create_vm(env.spec(name, disk_size=size))
    if Capability.DISK_GROWTH not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.grow_disk(name, size + GiB)
        env.driver.delete_vm(name)
        return
    with pytest.raises(InvalidInput, match="only grow"):
        env.driver.grow_disk(name, size - GiB)
    assert env.driver.get_vm(name).disk_size == size
    assert env.driver.grow_disk(name, size).disk_size == size
    env.driver.delete_vm(name)


def test_growing_beyond_the_free_storage_is_refused(env: Env) -> None:
    name = env.name()
    vm = env.driver.create_vm(env.spec(name))
    if Capability.DISK_GROWTH not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.grow_disk(name, vm.disk_size + GiB)
        env.driver.delete_vm(name)
        return
    free = env.driver.host_info().storage_free
    assert free is not None
    with pytest.raises(OutOfCapacity):
        env.driver.grow_disk(name, vm.disk_size + (free // GiB + 1) * GiB)
    assert env.driver.get_vm(name).disk_size == vm.disk_size
    env.driver.delete_vm(name)


# -- snapshots keep the size they were taken at --------------------------------------


def test_a_revert_returns_the_disk_to_its_snapshots_size(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    vm = env.driver.create_vm(env.spec(name))
    if Capability.SNAPSHOTS not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.create_snapshot(name, "small")
        env.driver.delete_vm(name)
        return
    small = env.driver.create_snapshot(name, "small")
    assert small.disk_size == vm.disk_size
    if Capability.DISK_GROWTH not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.grow_disk(name, vm.disk_size + GiB)
        env.driver.delete_vm(name)
        return
    size = vm.disk_size + GiB
    env.driver.grow_disk(name, size)
    big = env.driver.create_snapshot(name, "big")
    assert big.disk_size == size
    assert {s.name: s.disk_size for s in env.driver.list_snapshots(name)} == {
        "small": vm.disk_size,
        "big": size,
    }
    assert env.driver.revert_to_snapshot(name, "small").disk_size == vm.disk_size
    assert env.driver.get_vm(name).disk_size == vm.disk_size
    assert env.driver.revert_to_snapshot(name, "big").disk_size == size
    env.driver.delete_vm(name)
    assert env.harness.disks() == before
