"""Tests of the XAPI simulator, driven through the official XenAPI SDK over XML-RPC."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import XenAPI

from tests.xapi_sim import XapiSimulator
from tests.xapi_sim.sm import DRIVERS

GIB = 1024**3
MIB = 1024**2
NULL = "OpaqueRef:NULL"


@pytest.fixture
def sim() -> Iterator[XapiSimulator]:
    simulator = XapiSimulator(task_seconds=0.02, guest_boot_seconds=0.02).start()
    try:
        yield simulator
    finally:
        simulator.stop()


def connect(sim: XapiSimulator, url: str | None = None) -> XenAPI.Session:
    session = XenAPI.Session(url or sim.url, ignore_ssl=True)
    session.xenapi.login_with_password("root", "s3cret", "2.21", "sim-tests")
    return session


@pytest.fixture
def x(sim: XapiSimulator) -> Iterator[Any]:
    session = connect(sim)
    yield session.xenapi


def failure(fn: Callable[..., Any], *args: Any) -> list[str]:
    with pytest.raises(XenAPI.Failure) as caught:
        fn(*args)
    return caught.value.details


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def template(x: Any, name: str = "Other install media") -> str:
    return x.VM.get_by_name_label(name)[0]


def default_sr(x: Any) -> str:
    return x.pool.get_default_SR(x.pool.get_all()[0])


def new_disk(x: Any, size: int = GIB, sr: str | None = None) -> str:
    record = {
        "name_label": "disk",
        "SR": sr or default_sr(x),
        "virtual_size": str(size),
        "type": "user",
        "sharable": False,
        "read_only": False,
        "other_config": {},
    }
    return x.VDI.create(record)


def attach(x: Any, vm: str, vdi: str, device: str = "0") -> str:
    record = {
        "VM": vm,
        "VDI": vdi,
        "userdevice": device,
        "bootable": True,
        "mode": "RW",
        "type": "Disk",
        "empty": False,
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    return x.VBD.create(record)


def new_vm(x: Any, name: str = "vm", disk: bool = True) -> str:
    vm = x.VM.clone(template(x), name)
    x.VM.provision(vm)
    if disk:
        attach(x, vm, new_disk(x))
    network = x.network.get_all()[0]
    vif = {
        "device": "0",
        "network": network,
        "VM": vm,
        "MAC": "",
        "MTU": "1500",
        "other_config": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
    }
    x.VIF.create(vif)
    return vm


def tools_ready(x: Any, vm: str) -> bool:
    gm = x.VM.get_guest_metrics(vm)
    return gm != NULL and "0/ip" in x.VM_guest_metrics.get_networks(gm)


def running_vm(x: Any, name: str = "vm") -> str:
    vm = new_vm(x, name)
    x.VM.start(vm, False, False)
    wait_for(lambda: tools_ready(x, vm))
    return vm


def vm_in_state(x: Any, state: str) -> str:
    if state == "Halted":
        return new_vm(x)
    vm = running_vm(x)
    if state == "Paused":
        x.VM.pause(vm)
    elif state == "Suspended":
        x.VM.suspend(vm)
    return vm


# -- sessions, pool, wire ---------------------------------------------------------


def test_login_and_wrong_password(sim: XapiSimulator) -> None:
    session = connect(sim)
    assert session.handle.startswith("OpaqueRef:")
    assert session.xenapi.session.get_this_host(session.handle) == sim.master_ref
    bad = XenAPI.Session(sim.url, ignore_ssl=True)
    details = failure(bad.xenapi.login_with_password, "root", "nope", "2.21", "t")
    assert details == ["SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure"]


def test_member_answers_host_is_slave_and_master_serves(sim: XapiSimulator) -> None:
    assert sim.member_url is not None and f":{sim.port}/" in sim.member_url
    member = XenAPI.Session(sim.member_url, ignore_ssl=True)
    details = failure(member.xenapi.login_with_password, "root", "s3cret", "2.21", "t")
    assert details == ["HOST_IS_SLAVE", "127.0.0.1"]
    redirected = f"https://{details[1]}:{sim.port}/"
    session = connect(sim, redirected)
    assert session.xenapi.pool.get_record(session.xenapi.pool.get_all()[0])["name_label"] == (
        "sim-pool"
    )


def test_expired_session_is_renewed_by_the_sdk(sim: XapiSimulator, x: Any) -> None:
    x.pool.get_all()
    sim.expire_sessions()
    assert x.pool.get_all()  # the SDK saw SESSION_INVALID, logged in again, retried
    logins = [c for c in sim.calls if c[0] == "session.login_with_password"]
    assert len(logins) == 2
    raw = xmlrpc.client.ServerProxy(sim.url, context=ssl._create_unverified_context())
    reply = raw.VM.get_all("OpaqueRef:stale")
    assert reply["ErrorDescription"] == ["SESSION_INVALID", "OpaqueRef:stale"]


def test_certificate_verifies_for_loopback(sim: XapiSimulator) -> None:
    assert sim.certificate_pem is not None
    context = ssl.create_default_context(cadata=sim.certificate_pem)
    session = XenAPI.Session(sim.url, transport=xmlrpc.client.SafeTransport(context=context))
    session.xenapi.login_with_password("root", "s3cret", "2.21", "t")
    assert session.xenapi.host.get_all()


def test_pool_hosts_and_templates(x: Any, sim: XapiSimulator) -> None:
    pool = x.pool.get_all()[0]
    master = x.pool.get_master(pool)
    host = x.host.get_record(master)
    assert host["address"] == "127.0.0.1"
    assert host["software_version"]["product_brand"] == "XCP-ng"
    assert host["cpu_info"]["cpu_count"] == "8"
    metrics = x.host_metrics.get_record(host["metrics"])
    assert int(metrics["memory_total"]) > int(metrics["memory_free"]) > 0
    assert len(x.host.get_all()) == 2
    vms = x.VM.get_all_records()
    dom0s = [r for r in vms.values() if r["is_control_domain"]]
    assert len(dom0s) == 2 and all(r["power_state"] == "Running" for r in dom0s)
    templates = {r["name_label"] for r in vms.values() if r["is_a_template"]}
    assert {"Other install media", "Debian Bookworm 12"} <= templates
    srs = x.SR.get_all_records()
    assert srs[x.pool.get_default_SR(pool)]["name_label"] == "Local storage"
    networks = x.network.get_all_records().values()
    assert [n["name_label"] for n in networks] == ["Pool-wide network associated with eth0"]


def test_int64_travels_as_string_both_ways(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    record = x.VM.get_record(vm)
    assert isinstance(record["memory_static_max"], str)
    assert isinstance(record["VCPUs_max"], str)
    x.VM.set_memory_limits(vm, str(GIB // 2), str(GIB), str(GIB // 2), str(GIB))
    assert ("VM.set_memory_limits", (vm, str(GIB // 2), str(GIB), str(GIB // 2), str(GIB))) in (
        sim.calls
    )
    x.VM.set_VCPUs_max(vm, 4)  # a native <int> is accepted too (Rpc.int64_of_rpc)
    assert x.VM.get_VCPUs_max(vm) == "4"
    assert failure(x.VM.set_VCPUs_max, vm, "four") == [
        "INTERNAL_ERROR",
        'Failure("Int64.of_string")',
    ]


def test_unknown_refs_methods_and_arity(x: Any) -> None:
    assert failure(x.VM.get_record, "OpaqueRef:nope") == ["HANDLE_INVALID", "VM", "OpaqueRef:nope"]
    vdi = x.VDI.get_all()[0]
    assert failure(x.VM.start, vdi, False, False)[:2] == ["HANDLE_INVALID", "VM"]
    assert failure(x.VM.get_by_uuid, "no-such-uuid") == ["UUID_INVALID", "VM", "no-such-uuid"]
    assert failure(x.VM.frobnicate, vdi) == ["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"]
    vm = x.VM.get_all()[0]
    assert failure(x.VM.start, vm) == ["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.start", "3", "1"]
    assert x.VM.get_by_name_label("Other install media") == [template(x)]


def test_get_all_records_where(x: Any) -> None:
    expr = 'field "is_a_template" = "true" and not field "name__label" = "Debian Bookworm 12"'
    found = x.VM.get_all_records_where(expr)
    assert [r["name_label"] for r in found.values()] == ["Other install media"]
    running = x.VM.get_all_records_where('field "power_state" = "Running"')
    assert all(r["is_control_domain"] for r in running.values()) and len(running) == 2
    assert failure(x.VM.get_all_records_where, 'field "x" ==')[0] == "INVALID_VALUE"


# -- power states and settings -----------------------------------------------------


def test_start_twice_is_bad_power_state(x: Any) -> None:
    vm = new_vm(x)
    x.VM.start(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    assert failure(x.VM.start, vm, False, False) == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(x.VM.unpause, vm) == ["VM_BAD_POWER_STATE", vm, "paused", "running"]
    assert x.VM.get_resident_on(vm) == x.pool.get_master(x.pool.get_all()[0])


def test_template_and_snapshot_protections(x: Any) -> None:
    tmpl = template(x)
    assert failure(x.VM.start, tmpl, False, False) == ["VM_IS_TEMPLATE", tmpl, "start"]
    assert failure(x.VM.destroy, tmpl) == ["VM_IS_TEMPLATE", tmpl, "destroy"]
    vm = new_vm(x)
    snap = x.VM.snapshot(vm, "s")
    assert failure(x.VM.start, snap, False, False) == ["VM_IS_SNAPSHOT", snap, "start"]
    assert failure(x.VM.provision, vm) == ["PROVISION_ONLY_ALLOWED_ON_TEMPLATE"]


def test_vcpu_rules(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    x.VM.set_VCPUs_max(vm, "4")
    assert failure(x.VM.set_VCPUs_at_startup, vm, "5")[0] == "INVALID_VALUE"
    x.VM.set_VCPUs_at_startup(vm, "2")
    assert failure(x.VM.set_VCPUs_max, vm, "1")[0] == "INVALID_VALUE"
    assert failure(x.VM.set_VCPUs_number_live, vm, "3") == [
        "VM_BAD_POWER_STATE",
        vm,
        "running",
        "halted",
    ]
    x.VM.start(vm, False, False)
    wait_for(lambda: tools_ready(x, vm))
    assert failure(x.VM.set_VCPUs_max, vm, "8") == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    x.VM.set_VCPUs_number_live(vm, "3")
    assert x.VM.get_VCPUs_at_startup(vm) == "3"
    assert x.VM_metrics.get_VCPUs_number(x.VM.get_metrics(vm)) == "3"
    assert failure(x.VM.set_VCPUs_number_live, vm, "5") == [
        "INVALID_VALUE",
        "VCPU values must satisfy: 0 < VCPUs ≤ VCPUs_max",
        "5",
    ]
    sim.features["Live_set_vcpus"] = False
    assert failure(x.VM.set_VCPUs_number_live, vm, "2") == [
        "LICENCE_RESTRICTION",
        "Live_set_vcpus",
    ]
    restrictions = x.pool.get_restrictions(x.pool.get_all()[0])
    assert restrictions["restrict_set_vcpus_number_live"] == "true"


def test_memory_rules(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    x.VM.set_memory_limits(vm, str(GIB), str(4 * GIB), str(GIB), str(2 * GIB))
    assert failure(x.VM.set_memory_dynamic_range, vm, str(3 * GIB), str(2 * GIB)) == [
        "MEMORY_CONSTRAINT_VIOLATION_ORDER"
    ]
    x.VM.start(vm, False, False)
    expected = ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    assert failure(x.VM.set_memory_static_max, vm, str(8 * GIB)) == expected
    assert failure(x.VM.set_memory_limits, vm, *[str(GIB)] * 4) == expected
    assert failure(x.VM.set_memory, vm, str(GIB)) == expected
    x.VM.set_memory_dynamic_range(vm, str(2 * GIB), str(3 * GIB))
    record = x.VM.get_record(vm)
    assert record["memory_dynamic_max"] == str(3 * GIB)
    assert record["memory_target"] == str(2 * GIB)
    assert x.VM_metrics.get_memory_actual(record["metrics"]) == str(3 * GIB)
    assert failure(x.VM.set_memory_dynamic_range, vm, str(GIB), str(5 * GIB)) == [
        "MEMORY_CONSTRAINT_VIOLATION_ORDER"
    ]
    sim.features["DMC"] = False
    assert failure(x.VM.set_memory_dynamic_range, vm, str(GIB), str(2 * GIB)) == [
        "MEMORY_CONSTRAINT_VIOLATION_MAXPIN",
        "DMC disabled",
    ]


def test_start_needs_host_memory(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    x.VM.set_memory_limits(vm, str(64 * GIB), str(64 * GIB), str(64 * GIB), str(64 * GIB))
    details = failure(x.VM.start, vm, False, False)
    assert details[0] == "HOST_NOT_ENOUGH_FREE_MEMORY"
    assert int(details[1]) > int(details[2]) > 0
    assert x.VM.get_power_state(vm) == "Halted"
    sim.fail_next("VM.start", "SR_BACKEND_FAILURE_47", "", "The SR is not available", "")
    other = new_vm(x, "other")
    assert failure(x.VM.start, other, False, False)[0] == "SR_BACKEND_FAILURE_47"
    x.VM.start(other, False, False)
    assert x.VM.get_power_state(other) == "Running"


def test_guest_tools_gate_clean_shutdown(sim: XapiSimulator, x: Any) -> None:
    sim.guest_boot_seconds = None
    vm = new_vm(x)
    x.VM.start(vm, False, False)
    gm = x.VM.get_guest_metrics(vm)
    assert gm != NULL and x.VM_guest_metrics.get_networks(gm) == {}
    assert "clean_shutdown" not in x.VM.get_allowed_operations(vm)
    assert failure(x.VM.clean_shutdown, vm) == ["VM_LACKS_FEATURE", vm]
    sim.set_guest_networks(x.VM.get_uuid(vm), {"0/ip": "10.0.0.5", "0/ipv4/0": "10.0.0.5"})
    assert x.VM_guest_metrics.get_networks(x.VM.get_guest_metrics(vm))["0/ip"] == "10.0.0.5"
    assert "clean_shutdown" in x.VM.get_allowed_operations(vm)
    x.VM.clean_shutdown(vm)
    assert x.VM.get_power_state(vm) == "Halted"


def test_suspend_resume_pause_and_hard_shutdown(x: Any, sim: XapiSimulator) -> None:
    vm = running_vm(x)
    vdis_before = len(sim.objects("VDI"))
    x.VM.suspend(vm)
    record = x.VM.get_record(vm)
    assert record["power_state"] == "Suspended" and record["suspend_VDI"] != NULL
    assert x.VBD.get_currently_attached(record["VBDs"][0]) is False
    assert len(sim.objects("VDI")) == vdis_before + 1
    x.VM.resume(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    assert len(sim.objects("VDI")) == vdis_before
    x.VM.pause(vm)
    assert x.VM.get_power_state(vm) == "Paused"
    x.VM.hard_shutdown(vm)
    assert x.VM.get_record(vm)["domid"] == "-1"
    assert x.VM.get_resident_on(vm) == NULL


def test_allowed_operations_match_what_calls_accept(sim: XapiSimulator, x: Any) -> None:
    sim.task_seconds = 0
    master = x.pool.get_master(x.pool.get_all()[0])
    calls: dict[str, Callable[[str], Any]] = {
        "snapshot": lambda vm: x.VM.snapshot(vm, "s"),
        "clone": lambda vm: x.VM.clone(vm, "c"),
        "copy": lambda vm: x.VM.copy(vm, "c", NULL),
        "checkpoint": lambda vm: x.VM.checkpoint(vm, "cp"),
        "start": lambda vm: x.VM.start(vm, False, False),
        "start_on": lambda vm: x.VM.start_on(vm, master, False, False),
        "pause": x.VM.pause,
        "unpause": x.VM.unpause,
        "clean_shutdown": x.VM.clean_shutdown,
        "clean_reboot": x.VM.clean_reboot,
        "hard_shutdown": x.VM.hard_shutdown,
        "hard_reboot": x.VM.hard_reboot,
        "suspend": x.VM.suspend,
        "resume": lambda vm: x.VM.resume(vm, False, False),
        "resume_on": lambda vm: x.VM.resume_on(vm, master, False, False),
        "pool_migrate": lambda vm: x.VM.pool_migrate(vm, master, {}),
        "changing_dynamic_range": lambda vm: x.VM.set_memory_dynamic_range(
            vm, x.VM.get_memory_dynamic_min(vm), x.VM.get_memory_dynamic_max(vm)
        ),
        "changing_static_range": lambda vm: x.VM.set_memory_static_range(
            vm, x.VM.get_memory_static_min(vm), x.VM.get_memory_static_max(vm)
        ),
        "changing_shadow_memory": lambda vm: x.VM.set_HVM_shadow_multiplier(vm, 1.0),
        "changing_VCPUs_live": lambda vm: x.VM.set_VCPUs_number_live(vm, "1"),
        "changing_NVRAM": lambda vm: x.VM.set_NVRAM(vm, {}),
        "make_into_template": lambda vm: x.VM.set_is_a_template(vm, True),
        "destroy": x.VM.destroy,
        "revert": x.VM.revert,
    }
    refused = {
        "Halted": ["clean_shutdown", "pause", "resume", "suspend", "changing_VCPUs_live"],
        "Running": ["start", "destroy", "resume", "unpause", "make_into_template"],
        "Paused": ["start", "suspend", "clean_shutdown", "destroy"],
        "Suspended": ["start", "pause", "clean_reboot", "clone"],
    }
    for state, not_listed in refused.items():
        listed = x.VM.get_allowed_operations(vm_in_state(x, state))
        assert listed, state
        for op in listed:
            if op in calls:
                calls[op](vm_in_state(x, state))  # must not raise
        for op in not_listed:
            assert op not in listed, (state, op)
            with pytest.raises(XenAPI.Failure):
                calls[op](vm_in_state(x, state))


# -- copies, snapshots, revert, destroy ----------------------------------------------


def test_clone_copy_and_provision(sim: XapiSimulator, x: Any) -> None:
    tmpl = template(x)
    clone = x.VM.clone(tmpl, "from-template")
    record = x.VM.get_record(clone)
    assert record["is_a_template"] and not record["is_default_template"]
    assert record["other_config"]["base_template_name"] == "Other install media"
    assert "default_template" not in record["other_config"]
    vm = new_vm(x)
    source_vdi = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
    fast = x.VM.clone(vm, "fast")
    fast_vdi = x.VBD.get_VDI(x.VM.get_VBDs(fast)[0])
    assert fast_vdi != source_vdi
    assert x.VDI.get_virtual_size(fast_vdi) == x.VDI.get_virtual_size(source_vdi)
    assert int(x.VDI.get_physical_utilisation(fast_vdi)) < GIB
    assert x.VIF.get_MAC(x.VM.get_VIFs(fast)[0]) != x.VIF.get_MAC(x.VM.get_VIFs(vm)[0])
    full = x.VM.copy(vm, "full", NULL)
    full_vdi = x.VBD.get_VDI(x.VM.get_VBDs(full)[0])
    assert int(x.VDI.get_physical_utilisation(full_vdi)) == GIB
    iso_sr = x.SR.get_by_name_label("XCP-ng Tools")[0]
    assert failure(x.VM.copy, vm, "iso", iso_sr) == [
        "OPERATION_NOT_ALLOWED",
        "Cannot copy a VM's disks to an ISO SR",
    ]
    x.VM.start(vm, False, False)
    assert failure(x.VM.clone, vm, "no")[:2] == ["VM_BAD_POWER_STATE", vm]
    debian = x.VM.clone(template(x, "Debian Bookworm 12"), "deb")
    vdis = len(sim.objects("VDI"))
    assert failure(x.VM.provision, debian) == ["UUID_INVALID", "sr", ""]
    assert len(sim.objects("VDI")) == vdis
    assert x.VM.get_is_a_template(debian) is False  # as in xapi: set before the disks
    other = x.VM.clone(template(x, "Debian Bookworm 12"), "deb2")
    spec = x.VM.get_other_config(other)["disks"]
    sr_uuid = x.SR.get_uuid(default_sr(x))
    x.VM.remove_from_other_config(other, "disks")
    x.VM.add_to_other_config(other, "disks", spec.replace('sr=""', f'sr="{sr_uuid}"'))
    x.VM.provision(other)
    vbd = x.VBD.get_record(x.VM.get_VBDs(other)[0])
    assert vbd["userdevice"] == "0" and vbd["bootable"]
    assert x.VDI.get_virtual_size(vbd["VDI"]) == str(10 * GIB)
    assert "disks" not in x.VM.get_other_config(other)


def test_snapshot_checkpoint_and_revert(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x, "original")
    uuid = x.VM.get_uuid(vm)
    vdi_before = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
    snap = x.VM.snapshot(vm, "snap")
    record = x.VM.get_record(snap)
    assert record["is_a_snapshot"] and record["is_a_template"]
    assert record["snapshot_of"] == vm and record["power_state"] == "Halted"
    assert snap in x.VM.get_snapshots(vm)
    snap_vdi = x.VBD.get_VDI(record["VBDs"][0])
    assert x.VDI.get_snapshot_of(snap_vdi) == vdi_before
    x.VM.set_name_label(vm, "renamed")
    x.VM.start(vm, False, False)
    x.VM.revert(snap)
    after = x.VM.get_record(vm)
    assert after["uuid"] == uuid and after["power_state"] == "Halted"
    assert after["name_label"] == "original"  # fields come back from the snapshot
    vdi_after = x.VBD.get_VDI(after["VBDs"][0])
    assert x.VDI.get_uuid(vdi_after) != x.VDI.get_uuid(snap_vdi)
    assert not x.VDI.get_all_records().get(vdi_before)  # the reverted disk is replaced
    assert x.VDI.get_snapshot_of(snap_vdi) == vdi_after
    assert after["parent"] == snap
    assert failure(x.VM.revert, vm) == ["VM_REVERT_FAILED", vm, NULL]
    clone = x.VM.clone(snap, "from-snapshot")
    assert x.VM.get_is_a_snapshot(clone) is False and x.VM.get_power_state(clone) == "Halted"

    x.VM.start(vm, False, False)
    assert failure(x.VM.checkpoint, vm, "too-early") == ["VM_LACKS_FEATURE", vm]  # no tools
    wait_for(lambda: tools_ready(x, vm))
    checkpoint = x.VM.checkpoint(vm, "cp")
    cp = x.VM.get_record(checkpoint)
    assert cp["power_state"] == "Suspended" and cp["suspend_VDI"] != NULL
    assert x.VM.get_power_state(vm) == "Running"
    x.VM.revert(checkpoint)
    assert x.VM.get_power_state(vm) == "Suspended"
    x.VM.resume(vm, False, False)
    assert x.VM.get_power_state(vm) == "Running"
    sim.features["Checkpoint"] = False
    assert failure(x.VM.checkpoint, vm, "no") == ["LICENCE_RESTRICTION", "Checkpoint"]
    assert x.VM.get_current_operations(vm) == {}


def test_destroy_keeps_disks_and_snapshots(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    vdi = x.VBD.get_VDI(x.VM.get_VBDs(vm)[0])
    snap = x.VM.snapshot(vm, "s")
    x.VM.start(vm, False, False)
    assert failure(x.VM.destroy, vm) == ["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"]
    assert failure(x.VDI.destroy, vdi) == ["VDI_IN_USE", vdi, "destroy"]
    x.VM.hard_shutdown(vm)
    x.VM.destroy(vm)
    assert vm not in sim.objects("VM")
    assert vdi in sim.objects("VDI")
    assert all(r["VM"] != vm for r in sim.objects("VBD").values())
    assert sim.record("VM", snap)["snapshot_of"] == vm  # dangling, as in xapi


# -- tasks ------------------------------------------------------------------------


def test_async_task_progress_and_result(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    sim.task_seconds = 0.6
    task = x.Async.VM.clone(vm, "async-clone")
    assert task.startswith("OpaqueRef:")
    assert x.VM.get_current_operations(vm) == {task: "clone"}
    assert failure(x.VM.start, vm, False, False) == [
        "OTHER_OPERATION_IN_PROGRESS",
        "VM",
        vm,
        "clone",
        task,
    ]
    progress = []
    while x.task.get_status(task) == "pending":
        progress.append(float(x.task.get_progress(task)))
        time.sleep(0.03)
    assert len(set(progress)) >= 3 and progress == sorted(progress)
    record = x.task.get_record(task)
    assert record["status"] == "success" and float(record["progress"]) == 1.0
    assert record["result"].startswith("<value>OpaqueRef:")
    clone = record["result"][len("<value>") : -len("</value>")]
    assert x.VM.get_name_label(clone) == "async-clone"
    assert x.VM.get_current_operations(vm) == {}
    failed = x.Async.VM.start(template(x), False, False)
    wait_for(lambda: x.task.get_status(failed) != "pending")
    assert x.task.get_error_info(failed) == ["VM_IS_TEMPLATE", template(x), "start"]
    x.task.destroy(failed)
    assert failed not in x.task.get_all()


def test_cancelled_clone_leaves_nothing(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    vms, vdis, vbds = (len(sim.objects(c)) for c in ("VM", "VDI", "VBD"))
    sim.task_seconds = 2.0
    task = x.Async.VM.clone(vm, "doomed")
    assert x.task.get_allowed_operations(task) == ["cancel"]
    x.task.cancel(task)
    wait_for(lambda: x.task.get_status(task) != "pending")
    assert x.task.get_status(task) == "cancelled"
    assert x.task.get_error_info(task) == ["TASK_CANCELLED", task]
    assert (len(sim.objects("VM")), len(sim.objects("VDI")), len(sim.objects("VBD"))) == (
        vms,
        vdis,
        vbds,
    )
    assert x.VM.get_current_operations(vm) == {}


# -- events -----------------------------------------------------------------------


def test_event_from_sees_other_sessions_changes(sim: XapiSimulator, x: Any) -> None:
    token = x.event_from(["vm"], "", 0.0)["token"]
    other = connect(sim).xenapi
    found: dict[str, Any] = {}

    def watch() -> None:
        current = token
        deadline = time.monotonic() + 5
        while "event" not in found and time.monotonic() < deadline:
            batch = x.event_from(["vm"], current, 5.0)
            current = batch["token"]
            for event in batch["events"]:
                if event["operation"] == "add" and event["snapshot"]["name_label"] == "watched":
                    found.update(event=event, at=time.monotonic(), token=current)

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)
    clone = other.VM.clone(template(other), "watched")
    created = time.monotonic()
    watcher.join(5)
    assert found["event"]["ref"] == clone and found["event"]["class"] == "vm"
    assert found["at"] - created < 1.0
    assert found["token"] > token
    other.VM.destroy(clone)
    later = x.event_from(["vm"], found["token"], 1.0)
    assert "del" in {e["operation"] for e in later["events"] if e["ref"] == clone}


def test_event_tokens_inject_and_lost_events(sim: XapiSimulator, x: Any) -> None:
    assert failure(x.event_from, ["vm"], "garbage", 0.0) == [
        "EVENT_FROM_TOKEN_PARSE_FAILURE",
        "garbage",
    ]
    first = x.event_from(["*"], "", 0.0)
    assert {e["operation"] for e in first["events"]} == {"add"}
    assert "session" not in {e["class"] for e in first["events"]}  # no events in datamodel
    assert first["valid_ref_counts"]["vm"] == len(x.VM.get_all())  # an <int>, not int64
    started = time.monotonic()
    quiet = x.event_from(["vm"], first["token"], 0.3)
    assert quiet["events"] == [] and time.monotonic() - started >= 0.25
    vm = template(x)
    marker = x.event.inject("VM", vm)
    assert failure(x.event.inject, "vm", vm) == ["HANDLE_INVALID", "vm", vm]
    after = x.event_from(["vm/" + vm], marker, 1.0)
    assert [e["operation"] for e in after["events"]] == ["mod"]
    sim.lose_events()
    assert failure(x.event_from, ["vm"], after["token"], 0.0) == ["EVENTS_LOST"]
    assert x.event_from(["vm"], "", 0.0)["events"]


def test_stop_returns_promptly_during_event_wait(sim: XapiSimulator, x: Any) -> None:
    token = x.event_from(["vm"], "", 0.0)["token"]
    outcome: list[object] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(_catch(lambda: x.event_from(["vm"], token, 30.0)))
    )
    waiter.start()
    time.sleep(0.2)
    begun = time.monotonic()
    sim.stop()
    assert time.monotonic() - begun < 1.5
    waiter.join(2)
    assert not waiter.is_alive()


def _catch(fn: Callable[[], Any]) -> object:
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 - any connection error is fine here
        return error


def test_vanish_and_come_back(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    sim.task_seconds = 0.2
    task = x.Async.VM.clone(vm, "frozen")
    sim.vanish()
    with pytest.raises((OSError, xmlrpc.client.ProtocolError, http.client.HTTPException)):
        x.VM.get_all()
    time.sleep(0.4)
    sim.come_back()
    y = connect(sim).xenapi
    assert y.task.get_status(task) in ("pending", "success")
    wait_for(lambda: y.task.get_status(task) == "success")


# -- storage -----------------------------------------------------------------------


def test_sr_full_and_vdi_rules(sim: XapiSimulator, x: Any) -> None:
    sr = default_sr(x)
    sim.sr_size = 3 * GIB
    vdi = new_disk(x, GIB)
    assert x.SR.get_physical_utilisation(sr) == str(GIB)
    details = failure(new_disk, x, 4 * GIB)
    assert details == ["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""]
    vm = new_vm(x, disk=False)
    attach(x, vm, vdi)
    new_disk(x, GIB + 512 * MIB)
    vms, vdis = len(sim.objects("VM")), len(sim.objects("VDI"))
    assert failure(x.VM.copy, vm, "too-big", NULL)[0] == "SR_BACKEND_FAILURE_44"
    assert (len(sim.objects("VM")), len(sim.objects("VDI"))) == (vms, vdis)
    assert failure(x.VDI.resize, vdi, str(GIB // 2))[0] == "SR_BACKEND_FAILURE_79"
    assert x.VDI.get_virtual_size(new_disk(x, 1)) == str(2 * MIB)  # VHD 2 MiB blocks


LVHD = DRIVERS["lvm"][1]  # what LVHDSR declares


def root_vdi(x: Any, vm: str) -> str:
    return str(x.VBD.get_VDI(x.VM.get_VBDs(vm)[0]))


def test_storage_managers_say_what_each_sr_can_do(sim: XapiSimulator, x: Any) -> None:
    managers = {r["type"]: r for r in x.SM.get_all_records().values()}
    assert set(managers) >= {"lvm", "ext", "iso"}
    lvm = managers["lvm"]
    assert lvm["name_label"] == "Local VHD on LVM"
    assert lvm["features"]["VDI_RESIZE"] == "1" and lvm["features"]["VDI_RESET_ON_BOOT"] == "2"
    assert "VDI_RESIZE_ONLINE" not in lvm["features"]  # LVHD resizes offline only
    assert "ATOMIC_PAUSE" not in lvm["features"]  # not a feature xapi knows: dropped
    assert sorted(lvm["capabilities"]) == sorted(lvm["features"])
    assert "THIN_PROVISIONING" in managers["ext"]["features"]
    sr = default_sr(x)
    assert x.SR.get_type(sr) == "lvm"
    ops = x.SR.get_allowed_operations(sr)
    assert {"vdi_create", "vdi_resize", "vdi_snapshot"} <= set(ops)
    assert not {"destroy", "forget", "vdi_revert"} & set(ops)  # a PBD is plugged; no feature
    tools = x.SR.get_by_name_label("XCP-ng Tools")[0]
    assert "vdi_create" not in x.SR.get_allowed_operations(tools)
    sim.set_sm_features("lvm", [f for f in LVHD if f != "VDI_RESIZE"])
    assert "vdi_resize" not in x.SR.get_allowed_operations(sr)
    vdi = new_disk(x, GIB)
    assert "resize" not in x.VDI.get_allowed_operations(vdi)
    assert failure(x.VDI.resize, vdi, str(2 * GIB)) == ["SR_OPERATION_NOT_SUPPORTED", sr]


def test_vdi_resize_on_a_thick_sr(sim: XapiSimulator, x: Any) -> None:
    sr = default_sr(x)
    sim.sr_size = 4 * GIB
    vm = new_vm(x)
    vdi = root_vdi(x, vm)
    assert "resize" in x.VDI.get_allowed_operations(vdi)
    x.VDI.resize(vdi, str(2 * GIB + 1))  # up to the next 2 MiB VHD block
    assert x.VDI.get_virtual_size(vdi) == str(2 * GIB + 2 * MIB)
    assert x.VDI.get_physical_utilisation(vdi) == str(2 * GIB + 2 * MIB)  # thick: all of it
    assert x.SR.get_physical_utilisation(sr) == str(2 * GIB + 2 * MIB)
    x.VDI.resize(vdi, str(2 * GIB + 2 * MIB))  # the same size: nothing changes
    assert x.VDI.get_virtual_size(vdi) == str(2 * GIB + 2 * MIB)
    # A smaller size is refused before it is rounded (LVHDVDI.resize), even within a block.
    assert failure(x.VDI.resize, vdi, str(2 * GIB + 1)) == [
        "SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", ""
    ]  # fmt: skip
    assert failure(x.VDI.resize, vdi, str(5 * GIB)) == [
        "SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""
    ]  # fmt: skip
    assert failure(x.VDI.resize, vdi, str(3000 * GIB))[:2] == ["SR_BACKEND_FAILURE_79", ""]
    assert x.VDI.get_virtual_size(vdi) == str(2 * GIB + 2 * MIB)
    assert x.SR.get_physical_utilisation(sr) == str(2 * GIB + 2 * MIB)
    task = x.Async.VDI.resize(vdi, str(3 * GIB))
    wait_for(lambda: x.task.get_status(task) != "pending")
    assert x.task.get_status(task) == "success" and x.VDI.get_virtual_size(vdi) == str(3 * GIB)


def test_a_running_vms_disk_grows_only_online_and_only_where_the_sm_says(
    sim: XapiSimulator, x: Any
) -> None:
    sr = default_sr(x)
    vm = running_vm(x)
    vdi = root_vdi(x, vm)
    assert "resize" not in x.VDI.get_allowed_operations(vdi)
    assert failure(x.VDI.resize, vdi, str(2 * GIB)) == ["VDI_IN_USE", vdi, "resize"]
    assert failure(x.VDI.resize_online, vdi, str(2 * GIB)) == ["SR_OPERATION_NOT_SUPPORTED", sr]
    sim.set_sm_features("lvm", [*LVHD, "VDI_RESIZE_ONLINE"])  # as the old raw LVMSR did
    assert "resize_online" in x.VDI.get_allowed_operations(vdi)
    x.VDI.resize_online(vdi, str(2 * GIB))
    assert x.VDI.get_virtual_size(vdi) == str(2 * GIB)
    assert x.VM.get_power_state(vm) == "Running"
    x.VM.hard_shutdown(vm)
    x.VDI.resize_online(vdi, str(3 * GIB))  # not in use: online is allowed too
    assert x.VDI.get_virtual_size(vdi) == str(3 * GIB)


def test_a_revert_gives_back_the_snapshots_disk_size(sim: XapiSimulator, x: Any) -> None:
    vm = new_vm(x)
    snap = x.VM.snapshot(vm, "before")
    x.VDI.resize(root_vdi(x, vm), str(4 * GIB))
    assert x.VDI.get_virtual_size(root_vdi(x, vm)) == str(4 * GIB)
    assert x.VDI.get_virtual_size(root_vdi(x, snap)) == str(GIB)
    x.VM.revert(snap)
    assert x.VDI.get_virtual_size(root_vdi(x, vm)) == str(GIB)


def test_a_thin_sr_takes_space_as_disks_are_written() -> None:
    with XapiSimulator(sr_type="ext", sr_size=4 * GIB, task_seconds=0.02).start() as sim:
        session = connect(sim)
        x = session.xenapi
        sr = default_sr(x)
        assert x.SR.get_type(sr) == "ext"
        vdi = new_disk(x, 2 * GIB)
        assert x.VDI.get_physical_utilisation(vdi) == "0"
        body = b"x" * (3 * MIB)
        conn = http.client.HTTPSConnection(
            "127.0.0.1", sim.port, context=ssl._create_unverified_context(), timeout=5
        )
        conn.request("PUT", f"/import_raw_vdi?session_id={session.handle}&vdi={vdi}", body=body)
        assert conn.getresponse().status == 200
        assert x.VDI.get_physical_utilisation(vdi) == str(3 * MIB)
        assert x.SR.get_physical_utilisation(sr) == str(3 * MIB)
        # FileVDI.resize checks no space: a thin disk may promise more than the SR has.
        x.VDI.resize(vdi, str(10 * GIB))
        assert x.VDI.get_virtual_size(vdi) == str(10 * GIB)
        assert x.VDI.get_physical_utilisation(vdi) == str(3 * MIB)
        copy = x.VDI.copy(vdi, sr)
        assert x.VDI.get_physical_utilisation(copy) == str(3 * MIB)  # what it holds
        assert x.SR.get_physical_utilisation(sr) == str(6 * MIB)


def test_vbd_and_vif_rules(x: Any) -> None:
    vm = new_vm(x)
    vdi = new_disk(x)
    assert failure(attach, x, vm, vdi, "0") == ["DEVICE_ALREADY_EXISTS", "0"]
    assert failure(attach, x, vm, vdi, "bogus") == ["INVALID_DEVICE", "bogus"]
    vbd = attach(x, vm, vdi, "autodetect")
    assert x.VBD.get_userdevice(vbd) == "1"
    vif = x.VM.get_VIFs(vm)[0]
    mac = x.VIF.get_MAC(vif)
    assert len(mac.split(":")) == 6 and x.VIF.get_MAC_autogenerated(vif)
    x.VM.start(vm, False, False)
    vbd_uuid, vm_uuid = x.VBD.get_uuid(vbd), x.VM.get_uuid(vm)
    assert failure(x.VBD.destroy, vbd) == [
        "OPERATION_NOT_ALLOWED",
        f"VBD '{vbd_uuid}' still attached to '{vm_uuid}'",
    ]
    assert failure(x.VIF.destroy, vif) == [
        "OPERATION_NOT_ALLOWED",
        "VIF currently attached to a running VM",
    ]
    record = {"name_label": "missing-fields", "SR": default_sr(x)}
    assert failure(x.VDI.create, record) == [
        "INTERNAL_ERROR",
        'Server_helpers.Dispatcher_FieldNotFound("virtual_size")',
    ]


def test_import_raw_vdi(sim: XapiSimulator, x: Any) -> None:
    session = connect(sim)
    vdi = new_disk(session.xenapi, 4 * MIB)

    def put(url_host: str, query: str, body: bytes) -> http.client.HTTPResponse:
        conn = http.client.HTTPSConnection(
            url_host, sim.port, context=ssl._create_unverified_context(), timeout=5
        )
        conn.request("PUT", f"/import_raw_vdi?{query}", body=body)
        return conn.getresponse()

    ok = put("127.0.0.1", f"session_id={session.handle}&vdi={vdi}&format=raw", b"x" * MIB)
    assert ok.status == 200 and ok.getheader("task-id", "").startswith("OpaqueRef:")
    assert sim.imported_bytes(vdi) == MIB
    uuid = session.xenapi.VDI.get_uuid(vdi)
    assert put("127.0.0.1", f"session_id={session.handle}&vdi={uuid}", b"y").status == 200
    assert put("127.0.0.1", f"session_id=OpaqueRef:bad&vdi={vdi}", b"x").status == 401
    too_big = put("127.0.0.1", f"session_id={session.handle}&vdi={vdi}", b"x" * (5 * MIB))
    assert too_big.status == 500
    moved = put("::1", f"session_id={session.handle}&vdi={vdi}", b"x")
    assert moved.status == 302 and moved.getheader("Location", "").startswith(sim.url[:-1])
