"""What the XAPI adapter does that the contract does not spell out: names XAPI shares,
tasks interrupted by a pool that went away, its event cache, what its storage managers
allow and hold (disks.py)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import XenAPI

from dockvisor.domain.model import (
    Capability,
    PowerState,
    TemplateOrigin,
    TemplateSizes,
    TemplateSpec,
    VMSpec,
)
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.drivers.registry import HostCredentials, open_driver
from dockvisor.drivers.xapi import XapiDriver
from dockvisor.errors import BadPowerState, InvalidInput, OutOfCapacity, Unsupported
from tests.xapi_sim import XapiSimulator
from tests.xapi_sim.sm import DRIVERS

PASSWORD = "adapter-pw"


@contextmanager
def pooled(
    folder: Path,
    *,
    features_off: tuple[str, ...] = (),
    sr_type: str = "lvm",
    setup: Callable[[XapiSimulator], None] | None = None,
) -> Iterator[tuple[XapiSimulator, XapiDriver]]:
    """A simulated pool (with `features_off` switched off and `setup` done before
    dockvisor connects; its default SR of `sr_type`) and the adapter connected to it,
    with a template "t"; both stopped at the end."""
    sim = XapiSimulator(users={"root": PASSWORD}, members=0, sr_type=sr_type).start()
    try:
        sim.task_seconds = 0.05
        for feature in features_off:
            sim.features[feature] = False
        if setup is not None:
            setup(sim)
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


# -- disks -----------------------------------------------------------------------------

LVHD = DRIVERS["lvm"][1]  # what LVHDSR declares


def small(name: str, **changes: object) -> VMSpec:
    values: dict[str, object] = {
        "name": name,
        "template": "t",
        "vcpus": 1,
        "memory": 512 * MiB,
        "max_vcpus": 1,
        "max_memory": 512 * MiB,
    }
    values.update(changes)
    return VMSpec(**values)  # type: ignore[arg-type]


def resizes(sim: XapiSimulator) -> list[str]:
    return [c[0] for c in sim.calls if "VDI.resize" in c[0]]


def test_a_stock_pool_grows_stopped_disks_only_and_says_so(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    assert Capability.DISK_GROWTH in driver.capabilities  # LVHD declares VDI_RESIZE
    assert Capability.LIVE_DISK_GROWTH not in driver.capabilities  # ...not VDI_RESIZE_ONLINE
    vm = driver.create_vm(small("grow"))
    sr = sim.record("SR", sim.default_sr)
    free = sr["physical_size"] - max(sr["physical_utilisation"], sr["virtual_allocation"])
    assert driver.host_info().storage_free == free
    driver.start_vm(vm.uuid)
    with pytest.raises(Unsupported, match="VDI_RESIZE_ONLINE.*stop it first"):
        driver.grow_disk(vm.uuid, 2 * GiB)
    assert resizes(sim) == []
    driver.force_off(vm.uuid)
    assert driver.grow_disk(vm.uuid, 2 * GiB).disk_size == 2 * GiB
    assert resizes(sim) == ["Async.VDI.resize"]
    assert driver.host_info().storage_free == free - (2 * GiB - 64 * MiB)  # thick: taken
    assert [v.disk_size for v in driver.list_vms() if v.uuid == vm.uuid] == [2 * GiB]


def test_where_the_storage_manager_resizes_online_a_running_vms_disk_grows_live(
    tmp_path: Path,
) -> None:
    online = [*LVHD, "VDI_RESIZE_ONLINE"]
    with pooled(tmp_path, setup=lambda sim: sim.set_sm_features("lvm", online)) as (
        sim,
        driver,
    ):
        assert Capability.LIVE_DISK_GROWTH in driver.capabilities
        vm = driver.create_vm(small("live"))
        driver.start_vm(vm.uuid)
        grown = driver.grow_disk(vm.uuid, 3 * GiB)
        assert grown.disk_size == 3 * GiB and grown.power_state is PowerState.RUNNING
        assert resizes(sim) == ["Async.VDI.resize_online"]


def test_without_vdi_resize_disks_do_not_grow_and_nothing_is_made(tmp_path: Path) -> None:
    fixed = [f for f in LVHD if f != "VDI_RESIZE"]
    with pooled(tmp_path, setup=lambda sim: sim.set_sm_features("lvm", fixed)) as (
        sim,
        driver,
    ):
        assert Capability.DISK_GROWTH not in driver.capabilities
        before = names(sim), set(sim.objects("VDI"))
        with pytest.raises(Unsupported, match="lacks VDI_RESIZE"):
            driver.create_vm(small("big", disk_size=GiB))
        assert (names(sim), set(sim.objects("VDI"))) == before
        vm = driver.create_vm(small("fixed"))
        with pytest.raises(Unsupported, match="lacks VDI_RESIZE"):
            driver.grow_disk(vm.uuid, GiB)


def test_a_thin_sr_would_take_any_size_dockvisor_asks_for_what_it_holds(
    tmp_path: Path,
) -> None:
    with pooled(tmp_path, sr_type="ext") as (sim, driver):
        sim.sr_size = 10 * GiB
        free = driver.host_info().storage_free
        assert free is not None and 9 * GiB < free < 10 * GiB  # the template's 64 MiB written
        vm = driver.create_vm(small("thin", disk_size=4 * GiB))
        assert vm.disk_size == 4 * GiB
        after = driver.host_info().storage_free
        # A CoW child, nothing written, yet its 4 GiB count at once: what the disk may
        # still grow into is promised (virtual_allocation), so growths cannot overcommit.
        assert after is not None and 4 * GiB - 64 * MiB <= free - after <= 4 * GiB + 64 * MiB
        with pytest.raises(OutOfCapacity, match="Local storage"):
            driver.grow_disk(vm.uuid, 20 * GiB)  # the SM would let it through (FileVDI)
        assert resizes(sim) == ["Async.VDI.resize"]  # the one of create_vm only
        with pytest.raises(OutOfCapacity):
            driver.create_vm(small("huge", disk_size=11 * GiB))


def test_a_refused_resize_after_the_clone_leaves_nothing(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    before = names(sim), set(sim.objects("VDI"))
    sim.fail_next("VDI.resize", "SR_BACKEND_FAILURE_44", "", "There is insufficient space", "")
    with pytest.raises(OutOfCapacity, match="SR_BACKEND_FAILURE_44"):
        driver.create_vm(small("full", disk_size=GiB))
    sim.fail_next("VDI.resize", "SR_BACKEND_FAILURE_79", "", "VDI Invalid size", "")
    with pytest.raises(InvalidInput, match="SR_BACKEND_FAILURE_79"):
        driver.create_vm(small("odd", disk_size=GiB))
    assert (names(sim), set(sim.objects("VDI"))) == before


def test_a_suspended_vms_disk_is_not_grown(pool: tuple[XapiSimulator, XapiDriver]) -> None:
    sim, driver = pool
    vm = driver.create_vm(small("sleepy"))
    driver.start_vm(vm.uuid)
    sim.set_guest_networks(vm.uuid, {"0/ip": "192.0.2.5"})  # its tools report: it can suspend
    session = XenAPI.Session(sim.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", PASSWORD, "2.0", "other")
    session.xenapi.VM.suspend(session.xenapi.VM.get_by_uuid(vm.uuid))
    session.xenapi.session.logout()
    with pytest.raises(BadPowerState, match="suspended"):
        driver.grow_disk(vm.uuid, 2 * GiB)
    assert resizes(sim) == []


def test_a_disk_another_client_grows_is_seen_as_a_change_of_its_vm(
    pool: tuple[XapiSimulator, XapiDriver],
) -> None:
    sim, driver = pool
    vm = driver.create_vm(small("watched"))
    seen: list[tuple[str, str]] = []
    changed = threading.Event()

    def heard(uuid: str, what: str) -> None:
        seen.append((uuid, what))
        if uuid == vm.uuid:
            changed.set()

    driver.watch(heard)
    assert driver._events.synced.wait(5)
    changed.clear()
    session = XenAPI.Session(sim.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", PASSWORD, "2.0", "other")
    x = session.xenapi
    vdi = x.VBD.get_VDI(x.VM.get_VBDs(x.VM.get_by_uuid(vm.uuid))[0])
    x.VDI.resize(vdi, str(GiB))
    session.xenapi.session.logout()
    assert changed.wait(5), seen
    assert [v.disk_size for v in driver.list_vms() if v.uuid == vm.uuid] == [GiB]


def test_a_templates_sizes_origin_and_docker_port_are_kept(
    pool: tuple[XapiSimulator, XapiDriver], tmp_path: Path
) -> None:
    sim, driver = pool
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    sizes = TemplateSizes(min_vcpus=2, min_memory=1 * GiB, default_vcpus=2,
                          default_memory=2 * GiB, default_disk=1 * GiB)  # fmt: skip
    origin = TemplateOrigin("hub", "alpine-docker", "3.20.1", "ab" * 32)
    spec = TemplateSpec(name="pulled", disk=str(disk), docker_port=2376, sizes=sizes,
                        origin=origin)  # fmt: skip
    added = driver.register_template(spec)
    assert (added.sizes, added.origin, added.docker_port) == (sizes, origin, 2376)
    listed = next(t for t in driver.list_templates() if t.name == "pulled")
    assert (listed.sizes, listed.origin, listed.docker_port) == (sizes, origin, 2376)
    plain = driver.get_template("t")
    assert (plain.sizes, plain.origin, plain.docker_port) == (TemplateSizes(), None, None)
    vm = driver.create_vm(small("from-pulled", template="pulled"))
    assert vm.disk_size == GiB  # the template's default disk, no size given
    other_config = sim.record("VM", driver._vm_ref(vm.uuid))["other_config"]
    assert "dockvisor-sizes" not in other_config and "dockvisor-origin" not in other_config
