"""Warm spares, held to the contract on every adapter connection the suite reaches: a
spare is made, listed and never a VM; a create adopts it at the asked size (its UUID
kept, its disk grown) and no second create gets it; an adoption a spare cannot serve
makes nothing and leaves the spare; deleting a spare leaves no disk. Where an adapter
lacks WARM_SPARES (XAPI), the test asserts that it says so.

The connections and templates are test_contract.py's fixtures. On qemu:///system the
spare is a real guest, booted and saved with its Docker engine up."""

from __future__ import annotations

import pytest

from dockvisor.domain.model import Capability, DiskMode, PowerState
from dockvisor.domain.naming import new_spare_name
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.errors import NotFound, Unsupported, WarmStartUnavailable
from dockvisor.services import warm
from dockvisor.services.engines import EngineAccess
from tests.conformance.test_contract import Env, env

__all__ = ["env"]  # the fixture this module shares with test_contract.py


def test_a_spare_is_made_adopted_once_and_never_a_vm(env: Env) -> None:
    driver = env.driver
    before = env.harness.disks(), env.names()
    if Capability.WARM_SPARES not in driver.capabilities:
        assert driver.list_spares() == []
        spec = env.spec(new_spare_name())
        with pytest.raises(Unsupported, match="spares"):
            driver.create_spare(spec)
        with pytest.raises(Unsupported, match="spares"):
            driver.keep_spares(env.template, 1)
        driver.keep_spares(env.template, 0)
        with pytest.raises(WarmStartUnavailable):
            driver.adopt_spare(env.spec(env.name()))
        assert (env.harness.disks(), env.names()) == before
        return

    template = driver.get_template(env.template)
    name = new_spare_name()
    spare = driver.create_spare(warm.spare_spec(driver, template, name, EngineAccess.default()))
    try:
        assert spare.ready and spare.stale is None and spare.name == name
        assert spare.stored > 0 and spare.uuid
        assert [s.name for s in driver.list_spares()] == [name]
        assert all(vm.name != name for vm in driver.list_vms()), "a spare is not a VM"
        with pytest.raises(NotFound, match="spare"):
            driver.get_vm(name)

        # What a spare cannot serve makes nothing, and leaves it for another create.
        during = env.harness.disks(), env.names()
        room = {"max_memory": spare.max_memory}
        too_big = env.spec(env.name(), vcpus=spare.max_vcpus + 1, max_vcpus=spare.max_vcpus + 1,
                           **room)  # fmt: skip
        with pytest.raises(WarmStartUnavailable, match="at most"):
            driver.adopt_spare(too_big)
        with pytest.raises(WarmStartUnavailable, match="full-copy"):
            driver.adopt_spare(env.spec(env.name(), disk_mode=DiskMode.FULL))
        roomy = env.spec(env.name(), max_memory=spare.max_memory - 128 * MiB)
        with pytest.raises(WarmStartUnavailable, match="more than this VM's maximum"):
            driver.adopt_spare(roomy)
        smaller = env.spec(env.name(), disk_size=spare.disk_size - 64 * MiB, **room)
        with pytest.raises(WarmStartUnavailable, match="disks only grow"):
            driver.adopt_spare(smaller)
        assert (env.harness.disks(), env.names()) == during
        assert [s.name for s in driver.list_spares()] == [name]

        vm_name = env.name()
        vm = driver.adopt_spare(
            env.spec(vm_name, vcpus=2, memory=512 * MiB, max_vcpus=spare.max_vcpus,
                     max_memory=spare.max_memory, disk_size=spare.disk_size + GiB)
        )  # fmt: skip
        assert vm.name == vm_name and vm.uuid == spare.uuid
        assert vm.power_state is PowerState.RUNNING
        assert (vm.vcpus, vm.memory) == (2, 512 * MiB), "grown live to the asked size"
        assert vm.disk_size == spare.disk_size + GiB
        assert driver.list_spares() == []
        with pytest.raises(WarmStartUnavailable, match="no warm spare"):
            driver.adopt_spare(env.spec(env.name()))
        driver.force_off(vm_name)
        driver.delete_vm(vm_name)
    finally:
        for left in driver.list_spares():
            driver.delete_spare(left.name)
    assert (env.harness.disks(), env.names()) == before


def test_keeping_spares_is_recorded_with_the_template(env: Env) -> None:
    driver = env.driver
    if Capability.WARM_SPARES not in driver.capabilities:
        with pytest.raises(Unsupported):
            driver.keep_spares(env.template, 3)
        assert driver.get_template(env.template).spares_kept == 0
        return
    driver.keep_spares(env.template, 3)
    assert driver.get_template(env.template).spares_kept == 3
    driver.keep_spares(env.template, 0)
    assert driver.get_template(env.template).spares_kept == 0
    with pytest.raises(NotFound):
        driver.delete_spare("spare.00000000")
