"""What the XAPI adapter does that the contract does not spell out: names XAPI shares,
tasks interrupted by a pool that went away, its event cache."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import XenAPI

from dockvisor.domain.model import TemplateSpec, VMSpec
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.registry import HostCredentials, open_driver
from dockvisor.drivers.xapi import XapiDriver
from dockvisor.errors import InvalidInput
from tests.xapi_sim import XapiSimulator

PASSWORD = "adapter-pw"


@contextmanager
def pooled(
    folder: Path, *, features_off: tuple[str, ...] = ()
) -> Iterator[tuple[XapiSimulator, XapiDriver]]:
    """A simulated pool (with `features_off` switched off before dockvisor connects) and
    the adapter connected to it, with a template "t"; both stopped at the end."""
    sim = XapiSimulator(users={"root": PASSWORD}, members=0).start()
    try:
        sim.task_seconds = 0.05
        for feature in features_off:
            sim.features[feature] = False
        uri = sim.url.replace("https://", "xapi://").rstrip("/")
        driver = open_driver(uri, HostCredentials("root", PASSWORD, sim.certificate_pem))
        assert isinstance(driver, XapiDriver)
        try:
            disk = folder / "disk.qcow2"
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True
            )
            driver.register_template(TemplateSpec(name="t", disk=str(disk), docker_port=None))
            yield sim, driver
        finally:
            driver.close()
    finally:
        sim.stop()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[XapiSimulator, XapiDriver]]:
    with pooled(tmp_path) as made:
        yield made


def names(sim: XapiSimulator) -> list[str]:
    return sorted(str(r["name_label"]) for r in sim.objects("VM").values())


def test_a_name_two_pool_vms_share_is_refused_and_each_id_works(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    first = driver.create_vm(VMSpec("twin", "t", 1, 512 * MiB, 1, 512 * MiB))
    session = XenAPI.Session(sim.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", PASSWORD, "2.0", "other")
    ref = session.xenapi.VM.clone(session.xenapi.VM.get_by_uuid(first.uuid), "twin")
    session.xenapi.VM.set_is_a_template(ref, False)
    second = session.xenapi.VM.get_uuid(ref)
    session.xenapi.session.logout()
    with pytest.raises(InvalidInput, match=f"2 VMs are named 'twin'.*{first.uuid}"):
        driver.get_vm("twin")
    assert driver.get_vm(first.uuid).uuid == first.uuid
    assert driver.get_vm(second).uuid == second
    assert [v.name for v in driver.list_vms()].count("twin") == 2


def test_a_task_that_finished_while_the_pool_was_away_is_undone(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    vdis = {r["uuid"] for r in sim.objects("VDI").values()}
    conn = driver._conn
    template = driver._template_ref("t")
    task = conn.call("test", "Async.VM.clone", template, "orphan")
    deadline = time.monotonic() + 5
    while conn.call("test", "task.get_status", task) == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "orphan" in names(sim)
    conn.lost_tasks.append(task)  # as run_task records it when the pool stops answering
    driver.settle_lost_tasks()
    assert "orphan" not in names(sim) and conn.lost_tasks == []
    assert {r["uuid"] for r in sim.objects("VDI").values()} == vdis


def test_int64_values_travel_as_strings(pool: tuple[XapiSimulator, XapiDriver]) -> None:
    sim, driver = pool
    driver.create_vm(VMSpec("sized", "t", 2, 768 * MiB, 4, 1024 * MiB))
    sent = {c[0]: list(c[1]) for c in sim.calls}
    assert sent["VM.set_VCPUs_max"][1:] == ["4"]
    assert sent["VM.set_VCPUs_at_startup"][1:] == ["2"]
    static_min = sent["VM.set_memory_limits"][1]
    assert isinstance(static_min, str)
    assert sent["VM.set_memory_limits"][2:] == [str(1024 * MiB), str(768 * MiB), str(768 * MiB)]


def test_a_refused_live_change_waits_for_the_next_boot_with_xapis_reason(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    vm = driver.create_vm(VMSpec("licensed", "t", 1, 512 * MiB, 4, 1024 * MiB))
    driver.start_vm(vm.uuid)
    sim.features["Live_set_vcpus"] = False  # the licence changed since dockvisor connected
    result = driver.set_resources(vm.uuid, vcpus=2)
    assert result.pending == {"vcpus": 2} and "LICENCE_RESTRICTION" in result.reasons[0]
    assert result.vm.pending_vcpus == 2 and result.vm.vcpus == 1
    driver.reboot_vm(vm.uuid)  # static sizes are applied while it is halted
    after = driver.get_vm(vm.uuid)
    assert after.vcpus == 2 and not after.has_pending_changes


def test_without_checkpoints_a_running_vms_snapshot_is_of_its_disks_and_reverts_booted(
    tmp_path: Path,
) -> None:
    with pooled(tmp_path, features_off=("Checkpoint",)) as (sim, driver):
        assert "memory-snapshots" not in driver.capabilities.names()
        vm = driver.create_vm(VMSpec("cold", "t", 1, 512 * MiB, 1, 512 * MiB))
        driver.start_vm(vm.uuid)
        snap = driver.create_snapshot(vm.uuid, "disks-only")
        assert not snap.with_memory and snap.power_state.value == "running"
        assert not any(c[0].endswith("VM.checkpoint") for c in sim.calls)
        reverted = driver.revert_to_snapshot(vm.uuid, "disks-only")
        assert reverted.power_state.value == "running"  # booted again from those disks


def test_a_guest_cannot_point_dockvisor_at_the_host_itself(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    vm = driver.create_vm(VMSpec("liar", "t", 1, 512 * MiB, 1, 512 * MiB))
    driver.start_vm(vm.uuid)
    sim.set_guest_networks(
        vm.uuid,
        {"0/ip": "127.0.0.1", "0/ipv4/0": "169.254.0.2", "0/ipv6/0": "::1",
         "1/ipv4/0": "0.0.0.0", "1/ipv6/0": "fe80::1", "2/ip": "not-an-address"},
    )  # fmt: skip
    assert driver.guest_addresses(vm.uuid) == []
    sim.set_guest_networks(vm.uuid, {"0/ip": "192.0.2.9", "0/ipv6/0": "2001:db8::9"})
    assert driver.guest_addresses(vm.uuid) == ["192.0.2.9", "2001:db8::9"]
