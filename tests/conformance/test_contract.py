"""The hypervisor contract, run unchanged against every adapter connection we can reach.

`test:///default` is libvirt's in-process test driver (real libvirt API, no daemon, no
guest); `qemu:///system` boots real QEMU guests of the Docker-ready template; `xapi` is a
pool of the XAPI simulator (tests/xapi_sim), reached through the official XenAPI SDK over
HTTPS on 127.0.0.1. What differs between them is in harness.py (how to make a template,
how to look at the hypervisor's own view), never here. Where an adapter lacks a
capability the suite asserts that it says so (Unsupported), it does not skip.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dockvisor.domain.model import (
    Capability,
    ConsoleKind,
    DiskMode,
    DockerEndpoint,
    PowerState,
    TemplateOrigin,
    TemplateSizes,
    TemplateSpec,
    VMSpec,
)
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.engines.docker import DockerEngine
from dockvisor.errors import (
    AlreadyExists,
    BadPowerState,
    DockvisorError,
    NotFound,
    Unsupported,
)
from dockvisor.services import vms as vm_service
from dockvisor.services.engines import EngineAccess
from tests.conformance.harness import Harness, LibvirtHarness, XapiHarness, small_disk


@dataclass
class Env:
    harness: Harness
    prefix: str

    @property
    def driver(self) -> HypervisorDriver:
        return self.harness.driver

    @property
    def template(self) -> str:
        return self.harness.template

    @property
    def real_guests(self) -> bool:
        return self.harness.real_guests

    def name(self) -> str:
        return f"{self.prefix}{secrets.token_hex(3)}"

    def spec(self, name: str, **changes: object) -> VMSpec:
        values: dict[str, object] = {
            "name": name,
            "template": self.template,
            "vcpus": 1,
            "memory": 512 * MiB,
            "max_vcpus": 2,
            "max_memory": 1 * GiB,
        }
        values.update(changes)
        return VMSpec(**values)  # type: ignore[arg-type]

    def disks_of(self, name: str) -> set[str]:
        return self.harness.disks_of(name)

    def names(self) -> set[str]:
        return self.harness.names()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("test:///default", id="test"),
        pytest.param("qemu:///system", id="qemu", marks=pytest.mark.vm),
        pytest.param("xapi", id="xapi"),
    ],
)
def env(
    request: pytest.FixtureRequest, run_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    folder = tmp_path_factory.mktemp("template")
    harness: Harness
    if request.param == "xapi":
        harness = XapiHarness(run_prefix, folder)
    else:
        harness = LibvirtHarness(request.param, run_prefix, folder)
    try:
        yield Env(harness, run_prefix)
        for vm in harness.driver.list_vms():
            if vm.name.startswith(run_prefix):
                vm_service.delete_vm(harness.driver, vm.uuid, force=True)
    finally:
        harness.close()


@pytest.fixture(scope="module")
def running_vm(env: Env) -> Iterator[str]:
    """One VM booted for the module; tests may resize and snapshot it, and leave it running."""
    name = env.name()
    vm_service.create_vm_from_template(
        env.driver, name=name, template=env.template, vcpus=1, memory=512 * MiB,
        max_vcpus=4, max_memory=1 * GiB, wait=env.real_guests,
    )  # fmt: skip
    yield name
    vm_service.delete_vm(env.driver, name, force=True)


def _engine(endpoint: DockerEndpoint) -> DockerEngine:
    """A client of a VM's engine with the PKI the services used to make the VM."""
    return EngineAccess.default().engine(endpoint)


def _delete(driver: HypervisorDriver, name: str) -> None:
    vm_service.delete_vm(driver, name, force=True)


# -- host and templates ----------------------------------------------------------------


def test_host_reports_its_size_and_what_the_adapter_can_do(env: Env) -> None:
    host = env.driver.host_info()
    assert host.cpus >= 1 and host.memory >= 512 * MiB
    assert host.max_vcpus_per_vm >= host.cpus
    assert Capability.SNAPSHOTS in host.capabilities
    if env.real_guests:
        assert host.acceleration in ("kvm", "tcg")
        assert Capability.LOOPBACK_FORWARD in host.capabilities


def test_template_is_listed_and_unknown_template_is_not_found(env: Env) -> None:
    names = [t.name for t in env.driver.list_templates()]
    assert env.template in names
    assert env.driver.get_template(env.template).disk_size > 0
    with pytest.raises(NotFound, match="no template named 'nope'"):
        env.driver.get_template("nope")
    assert env.template not in [vm.name for vm in env.driver.list_vms()]


def test_register_and_remove_a_template(env: Env, tmp_path: Path) -> None:
    name = env.name()
    disk = small_disk(tmp_path)
    before = env.harness.disks()
    added = env.driver.register_template(TemplateSpec(name=name, disk=str(disk), docker_port=None))
    assert added.disk_size == 64 * MiB and not added.docker_ready and not added.builtin
    with pytest.raises(AlreadyExists):
        env.driver.register_template(TemplateSpec(name=name, disk=str(disk)))
    vm = env.name()
    env.driver.create_vm(env.spec(vm, template=name))
    if env.harness.clones_hold_their_template:
        with pytest.raises(BadPowerState, match=vm):
            env.driver.remove_template(name)
        env.driver.delete_vm(vm)
        env.driver.remove_template(name)
    else:  # the storage keeps what the VM needs of its template's disk
        env.driver.remove_template(name)
        assert env.driver.get_vm(vm).disk_size == 64 * MiB
        env.driver.delete_vm(vm)
    assert name not in [t.name for t in env.driver.list_templates()]
    assert env.harness.disks() == before


def test_a_newer_catalog_version_replaces_its_template_and_spares_its_vms(
    env: Env, tmp_path: Path
) -> None:
    name = env.name()
    disk = small_disk(tmp_path)
    before = env.harness.disks()

    def version(v: str, catalog: str = "acme") -> TemplateSpec:
        origin = TemplateOrigin(catalog, "tiny", v, "0" * 64)
        sizes = TemplateSizes(min_memory=256 * MiB, default_disk=128 * MiB)
        return TemplateSpec(name=name, disk=str(disk), docker_port=None, sizes=sizes,
                            origin=origin)  # fmt: skip

    first = env.driver.register_template(version("1"))
    assert first.origin == TemplateOrigin("acme", "tiny", "1", "0" * 64)
    assert first.sizes.min_memory == 256 * MiB and first.sizes.default_disk == 128 * MiB
    vm = env.name()
    env.driver.create_vm(env.spec(vm, template=name))
    with pytest.raises(AlreadyExists):  # another catalog's template of that name
        env.driver.register_template(version("2", catalog="other"))
    with pytest.raises(AlreadyExists):  # a plain template
        env.driver.register_template(TemplateSpec(name=name, disk=str(disk), docker_port=None))

    second = env.driver.register_template(version("2"))
    assert second.origin is not None and second.origin.version == "2"
    assert [t.name for t in env.driver.list_templates()].count(name) == 1
    assert env.driver.get_vm(vm).template == name, "the VM made from version 1 is still there"
    env.driver.delete_vm(vm)
    env.driver.remove_template(name)
    assert env.harness.disks() == before


# -- create and delete -----------------------------------------------------------------


def test_create_gives_exact_size_with_room_to_grow(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    vm = env.driver.create_vm(env.spec(name, vcpus=2, memory=768 * MiB, max_vcpus=4,
                                       max_memory=2 * GiB))  # fmt: skip
    assert (vm.vcpus, vm.memory, vm.max_vcpus, vm.max_memory) == (2, 768 * MiB, 4, 2 * GiB)
    assert vm.power_state is PowerState.STOPPED
    assert vm.template == env.template and vm.disk_mode is DiskMode.LINKED and vm.managed
    assert name in [v.name for v in env.driver.list_vms()]
    assert len(env.disks_of(name)) == 1
    env.driver.delete_vm(name)
    with pytest.raises(NotFound):
        env.driver.get_vm(name)
    assert env.harness.disks() == before


def test_create_full_copy(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    vm = env.driver.create_vm(env.spec(name, disk_mode=DiskMode.FULL))
    assert vm.disk_mode is DiskMode.FULL and len(env.disks_of(name)) == 1
    env.driver.delete_vm(name)
    assert env.harness.disks() == before


def test_create_with_a_taken_name_is_refused_and_changes_nothing(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    before = env.harness.disks(), env.names()
    with pytest.raises(AlreadyExists, match=f"VM named '{name}'"):
        env.driver.create_vm(env.spec(name))
    with pytest.raises(AlreadyExists, match="template named"):
        env.driver.create_vm(env.spec(env.template))
    assert (env.harness.disks(), env.names()) == before
    env.driver.delete_vm(name)


def test_create_from_unknown_template_leaves_nothing(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    with pytest.raises(NotFound, match="no template named 'nope'"):
        env.driver.create_vm(env.spec(name, template="nope"))
    assert name not in env.names() and env.harness.disks() == before


def test_a_create_the_hypervisor_rejects_removes_its_disk(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    rejection = env.harness.rejection()
    with pytest.raises(DockvisorError, match=rejection.message):
        env.driver.create_vm(env.spec(name, **rejection.spec_changes))
    assert name not in env.names() and env.harness.disks() == before


def test_vms_dockvisor_did_not_create_are_listed_and_deletable(env: Env) -> None:
    name = env.name()
    env.harness.define_foreign_vm(name)
    vm = env.driver.get_vm(name)
    assert not vm.managed and vm.template is None and vm.memory == 256 * MiB
    with pytest.raises(Unsupported):
        env.driver.clone_vm(name, env.name())
    env.driver.delete_vm(name)
    assert name not in env.names()


# -- power -----------------------------------------------------------------------------


def test_power_operations_check_the_power_state(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    with pytest.raises(BadPowerState, match="stopped"):
        env.driver.force_off(name)
    assert env.driver.start_vm(name).power_state is PowerState.RUNNING
    with pytest.raises(BadPowerState, match="already running"):
        env.driver.start_vm(name)
    with pytest.raises(BadPowerState, match="running"):
        env.driver.delete_vm(name)
    assert env.driver.force_off(name).power_state is PowerState.STOPPED
    env.driver.delete_vm(name)


def test_clean_shutdown_and_reboot(env: Env) -> None:
    name = env.name()
    vm_service.create_vm_from_template(
        env.driver, name=name, template=env.template, vcpus=1, memory=512 * MiB,
        wait=env.real_guests,
    )  # fmt: skip
    rebooted = vm_service.reboot_vm(env.driver, name, wait=env.real_guests)
    assert rebooted.power_state is PowerState.RUNNING
    if env.real_guests:  # its engine went down and came back
        with _engine(env.driver.docker_endpoint(name)) as engine:
            assert engine.ping()
    assert env.driver.shutdown_vm(name, timeout=90).power_state is PowerState.STOPPED
    env.driver.delete_vm(name)


# -- resources -------------------------------------------------------------------------


def test_live_resize_within_the_maximum(env: Env, running_vm: str) -> None:
    vcpus = env.driver.get_vm(running_vm).vcpus + 1
    result = env.driver.set_resources(running_vm, vcpus=vcpus, memory=768 * MiB)
    assert result.applied == {"vcpus": vcpus, "memory": 768 * MiB} and result.pending == {}
    vm = result.vm
    assert (vm.vcpus, vm.memory) == (vcpus, 768 * MiB) and not vm.has_pending_changes
    back = env.driver.set_resources(running_vm, memory=512 * MiB).vm
    assert back.memory == 512 * MiB


def test_fewer_vcpus_for_a_running_vm(env: Env, running_vm: str) -> None:
    """Live where the adapter declares LIVE_VCPU_REMOVAL, else at the next boot."""
    vm = env.driver.get_vm(running_vm)
    if vm.vcpus == 1:
        vm = env.driver.set_resources(running_vm, vcpus=2).vm
    result = env.driver.set_resources(running_vm, vcpus=vm.vcpus - 1)
    if Capability.LIVE_VCPU_REMOVAL in env.driver.capabilities:
        assert result.applied == {"vcpus": vm.vcpus - 1} and result.pending == {}
        assert result.vm.vcpus == vm.vcpus - 1 and not result.vm.has_pending_changes
        env.driver.set_resources(running_vm, vcpus=vm.vcpus)
        assert env.driver.get_vm(running_vm).vcpus == vm.vcpus
        return
    assert result.pending == {"vcpus": vm.vcpus - 1} and "next boot" in result.reasons[0]
    assert result.vm.vcpus == vm.vcpus and result.vm.pending_vcpus == vm.vcpus - 1
    env.driver.set_resources(running_vm, vcpus=vm.vcpus)  # back to no pending change
    assert not env.driver.get_vm(running_vm).has_pending_changes


def test_resize_beyond_the_maximum_is_pending_then_applied_at_next_boot(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    env.driver.start_vm(name)
    result = env.driver.set_resources(name, vcpus=3, memory=1536 * MiB)
    assert result.pending == {"vcpus": 3, "max_vcpus": 3, "memory": 1536 * MiB,
                              "max_memory": 1536 * MiB}  # fmt: skip
    assert result.reasons and "next boot" in result.reasons[0]
    vm = result.vm
    assert vm.vcpus == 1 and vm.pending_vcpus == 3 and vm.pending_memory == 1536 * MiB
    env.driver.force_off(name)
    vm = env.driver.start_vm(name)
    assert (vm.vcpus, vm.max_vcpus, vm.max_memory) == (3, 3, 1536 * MiB)
    assert not vm.has_pending_changes
    env.driver.force_off(name)
    env.driver.delete_vm(name)


def test_stopped_vm_takes_a_new_size_directly(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    result = env.driver.set_resources(name, vcpus=4, memory=2 * GiB)
    assert result.applied == {"vcpus": 4, "memory": 2 * GiB} and result.pending == {}
    assert (result.vm.vcpus, result.vm.max_vcpus, result.vm.max_memory) == (4, 4, 2 * GiB)
    env.driver.delete_vm(name)


# -- snapshots -------------------------------------------------------------------------


def test_snapshot_revert_and_delete_on_a_running_vm(env: Env, running_vm: str) -> None:
    drv = env.driver
    vcpus = drv.get_vm(running_vm).vcpus
    one = drv.create_snapshot(running_vm, "one", "before a vCPU is added")
    assert one.with_memory and one.power_state is PowerState.RUNNING
    assert one.description == "before a vCPU is added"
    with pytest.raises(AlreadyExists):
        drv.create_snapshot(running_vm, "one")
    drv.set_resources(running_vm, vcpus=vcpus + 1)  # a hot-plugged vCPU, then a snapshot
    two = drv.create_snapshot(running_vm, "two")
    assert two.parent == "one"
    reverted = drv.revert_to_snapshot(running_vm, "one")
    assert reverted.power_state is PowerState.RUNNING and reverted.vcpus == vcpus
    reverted = drv.revert_to_snapshot(running_vm, "two")
    assert reverted.power_state is PowerState.RUNNING and reverted.vcpus == vcpus + 1
    current = [s.name for s in drv.list_snapshots(running_vm) if s.current]
    assert current == ["two"]
    if env.real_guests:
        with _engine(drv.docker_endpoint(running_vm)) as engine:
            assert engine.ping()
    drv.delete_snapshot(running_vm, "one")
    drv.delete_snapshot(running_vm, "two")
    assert drv.list_snapshots(running_vm) == []
    with pytest.raises(NotFound, match="no snapshot 'one'"):
        drv.revert_to_snapshot(running_vm, "one")


def test_snapshot_of_a_stopped_vm_reverts_to_stopped(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    env.driver.create_vm(env.spec(name))
    snap = env.driver.create_snapshot(name, "cold")
    assert not snap.with_memory and snap.power_state is PowerState.STOPPED
    env.driver.start_vm(name)
    assert env.driver.revert_to_snapshot(name, "cold").power_state is PowerState.STOPPED
    assert env.driver.get_vm(name).snapshot_count == 1
    env.driver.delete_vm(name)
    assert env.harness.disks() == before


def test_reverting_to_another_vms_snapshot_is_refused(env: Env) -> None:
    a, b = env.name(), env.name()
    env.driver.create_vm(env.spec(a))
    env.driver.create_vm(env.spec(b))
    env.driver.create_snapshot(a, "mine")
    with pytest.raises(NotFound, match=f"VM '{b}' has no snapshot 'mine'.*VM '{a}'"):
        env.driver.revert_to_snapshot(b, "mine")
    env.driver.delete_vm(a)
    env.driver.delete_vm(b)


# -- clones ----------------------------------------------------------------------------


def test_linked_clone_of_a_running_vm(env: Env, running_vm: str) -> None:
    source = env.driver.get_vm(running_vm)
    clone_name = env.name()
    before = env.harness.disks(), env.names()
    clone = env.driver.clone_vm(running_vm, clone_name)
    assert clone.power_state is PowerState.STOPPED and clone.uuid != source.uuid
    assert clone.disk_mode is DiskMode.LINKED and clone.template == source.template
    assert (clone.max_vcpus, clone.max_memory) == (source.max_vcpus, source.max_memory)
    assert clone.snapshot_count == 0
    assert env.driver.get_vm(running_vm).power_state is PowerState.RUNNING
    assert len(env.disks_of(clone_name)) == 1
    env.driver.delete_vm(clone_name)
    assert (env.harness.disks(), env.names()) == before  # nor the instant's snapshot


def test_full_clone_of_a_stopped_vm(env: Env) -> None:
    name, clone_name = env.name(), env.name()
    env.driver.create_vm(env.spec(name))
    clone = env.driver.clone_vm(name, clone_name, linked=False)
    assert clone.disk_mode is DiskMode.FULL and clone.power_state is PowerState.STOPPED
    assert env.driver.get_vm(name).power_state is PowerState.STOPPED
    with pytest.raises(AlreadyExists):
        env.driver.clone_vm(name, clone_name)
    env.driver.delete_vm(clone_name)
    env.driver.delete_vm(name)


def test_a_config_drive_is_the_vms_own_and_a_clone_gets_a_new_one(env: Env) -> None:
    name, clone_name = env.name(), env.name()
    before = env.harness.disks()
    engines = EngineAccess.default()
    guest = engines.guest_config(name)
    env.driver.create_vm(env.spec(name, guest=guest))
    assert len(env.disks_of(name)) == 2  # its disk and its drive
    fresh = engines.guest_config(clone_name)
    env.driver.clone_vm(name, clone_name, guest=fresh)
    assert len(env.disks_of(clone_name)) == 2
    bare = env.name()
    env.driver.clone_vm(name, bare)  # no guest given: no drive, never the source's
    assert len(env.disks_of(bare)) == 1
    for vm in (bare, clone_name, name):
        env.driver.delete_vm(vm)
    assert env.harness.disks() == before


def test_delete_removes_snapshots_and_disks(env: Env) -> None:
    name = env.name()
    before = env.harness.disks()
    env.driver.create_vm(env.spec(name))
    env.driver.create_snapshot(name, "a")
    env.driver.create_snapshot(name, "b")
    env.driver.delete_vm(name)
    assert name not in env.names() and {"a", "b"}.isdisjoint(env.names())
    assert env.harness.disks() == before


# -- guest access ----------------------------------------------------------------------


def test_docker_endpoint_and_guest_addresses(env: Env, running_vm: str) -> None:
    if not env.real_guests and Capability.GUEST_ADDRESSES in env.driver.capabilities:
        # A simulated guest: what its tools report is the harness's to say (an address
        # of the documentation range, never contacted).
        env.harness.guest_reports(running_vm, "192.0.2.7")
        assert env.driver.guest_addresses(running_vm) == ["192.0.2.7"]
        endpoint = env.driver.docker_endpoint(running_vm)
        assert (endpoint.host, endpoint.port) == ("192.0.2.7", 2376)
        return
    if not env.real_guests:
        assert Capability.GUEST_ADDRESSES not in env.driver.capabilities
        with pytest.raises(Unsupported):
            env.driver.guest_addresses(running_vm)
        with pytest.raises(Unsupported):
            env.driver.docker_endpoint(running_vm)
        return
    endpoint = env.driver.docker_endpoint(running_vm)
    assert endpoint.host == "127.0.0.1" and 42000 <= endpoint.port <= 42999
    assert endpoint.tls and (endpoint.server_name or "").endswith(".vm.dockvisor")
    with _engine(endpoint) as engine:
        assert engine.ping()
        assert "busybox:latest" in [t for i in engine.images() for t in i["RepoTags"] or []]
    assert "10.0.2.15" in env.driver.guest_addresses(running_vm)


def test_docker_endpoint_of_a_stopped_vm_is_refused(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    reachable = env.real_guests or Capability.GUEST_ADDRESSES in env.driver.capabilities
    with pytest.raises(BadPowerState if reachable else Unsupported):
        env.driver.docker_endpoint(name)
    env.driver.delete_vm(name)


# -- metrics ---------------------------------------------------------------------------


def test_usage_counters_of_the_running_vms(env: Env, running_vm: str) -> None:
    if Capability.METRICS not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.usage_counters()
        return
    stopped = env.name()
    env.driver.create_vm(env.spec(stopped))
    try:
        first = env.driver.usage_counters()
        vm = env.driver.get_vm(running_vm)
        ids = {running_vm: vm.uuid, stopped: env.driver.get_vm(stopped).uuid}
        assert ids[stopped] not in first and ids[running_vm] in first
        assert env.template not in first and running_vm not in first  # by id, not name
        now = first[ids[running_vm]]
        # The memory it has is the balloon's: after a live shrink (an earlier test of
        # this VM) a busy guest may keep more than asked for a long while, never more
        # than its maximum.
        assert now.vcpus == vm.vcpus
        assert min(vm.memory, now.memory_total) > 0 and now.memory_total <= vm.max_memory
        assert now.cpu_time_ns > 0 and now.disk_read is not None and now.disk_write is not None
        time.sleep(1)
        later = env.driver.usage_counters()[ids[running_vm]]
        assert later.time > now.time and later.cpu_time_ns > now.cpu_time_ns
        assert later.disk_read is not None and later.disk_read >= now.disk_read
        if env.real_guests:  # the guest's own account, and its card counted by its agent
            # (the balloon reports every 5 s and the agent may still be starting: a
            # guest that has said nothing yet has no figures, not wrong ones)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (
                later.memory_used is None or later.net_rx is None
            ):
                time.sleep(1)
                now, later = later, env.driver.usage_counters()[ids[running_vm]]
            assert later.memory_used is not None and 0 < later.memory_used < later.memory_total
            assert later.disk_read > 0 and later.net_rx is not None and later.net_tx is not None
            following = env.driver.usage_counters()[ids[running_vm]]
            assert following.net_rx is not None and following.net_rx >= later.net_rx
    finally:
        env.driver.delete_vm(stopped)


# -- consoles --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ConsoleKind))
def test_the_consoles_of_a_running_vm(env: Env, running_vm: str, kind: ConsoleKind) -> None:
    if kind.capability not in env.driver.capabilities:
        with pytest.raises(Unsupported):
            env.driver.open_console(running_vm, kind)
        return
    with env.driver.open_console(running_vm, kind) as console:
        console.settimeout(30)
        if kind is ConsoleKind.VNC:
            assert console.recv(12).startswith(b"RFB 003.00")
            return
        console.sendall(b"echo contract-$((40+2))\n")
        seen = b""
        while b"contract-42" not in seen:
            data = console.recv(4096)
            assert data, f"the serial console ended; it said {seen[-300:]!r}"
            seen += data


def test_the_consoles_of_a_stopped_vm_are_refused(env: Env) -> None:
    name = env.name()
    env.driver.create_vm(env.spec(name))
    for kind in ConsoleKind:
        expected = BadPowerState if kind.capability in env.driver.capabilities else Unsupported
        with pytest.raises(expected):
            env.driver.open_console(name, kind)
    env.driver.delete_vm(name)


def test_the_consoles_end_when_the_vm_stops(env: Env) -> None:
    kinds = [k for k in ConsoleKind if k.capability in env.driver.capabilities]
    if not kinds:  # the refusals are the tests above
        return
    name = env.name()
    env.driver.create_vm(env.spec(name))
    try:
        env.driver.start_vm(name)
        consoles = [env.driver.open_console(name, kind) for kind in kinds]
        if ConsoleKind.VNC in kinds:
            assert consoles[kinds.index(ConsoleKind.VNC)].recv(12).startswith(b"RFB")
        env.driver.force_off(name)
        for console in consoles:
            with console:
                console.settimeout(5)
                while console.recv(65536):  # whatever was written, then the end
                    pass
    finally:
        _delete(env.driver, name)
