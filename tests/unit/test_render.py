import json
from datetime import UTC, datetime

from dockvisor.cli.render import as_json, table, to_data, vm_details, vm_rows
from dockvisor.domain.model import VM, Capability, DiskMode, HostInfo, PowerState, Snapshot
from dockvisor.domain.sizes import GiB, MiB

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def make_vm(**changes):
    fields = dict(
        name="web", uuid="6f1c2a9e", power_state=PowerState.RUNNING, vcpus=2, max_vcpus=4,
        memory=GiB, max_memory=2 * GiB, template="docker-ready", disk_mode=DiskMode.LINKED,
        disk_size=8 * GiB, created=CREATED,
    )  # fmt: skip
    fields.update(changes)
    return VM(**fields)


def test_vm_as_data():
    data = to_data(make_vm())
    assert data["power_state"] == "running"
    assert data["disk_mode"] == "linked"
    assert data["created"] == "2026-01-02T03:04:05+00:00"
    assert data["memory"] == GiB
    assert data["has_pending_changes"] is False
    assert to_data(make_vm(pending_vcpus=6))["has_pending_changes"] is True


def test_snapshot_as_data():
    snap = Snapshot(
        "before", "web", CREATED, PowerState.STOPPED, with_memory=False, vcpus=2, memory=GiB,
        disk_size=4 * GiB,
    )  # fmt: skip
    assert to_data(snap) == {
        "name": "before",
        "vm": "web",
        "created": "2026-01-02T03:04:05+00:00",
        "power_state": "stopped",
        "with_memory": False,
        "description": "",
        "parent": None,
        "current": False,
        "vcpus": 2,
        "memory": GiB,
        "disk_size": 4 * GiB,
    }


def test_host_capabilities_become_names():
    host = HostInfo("qemu:///system", "QEMU", "8.2.0", "box", 2, 8 * GiB, 4, "kvm",
                    Capability.SNAPSHOTS | Capability.LIVE_MEMORY)  # fmt: skip
    data = to_data(host)
    assert data["capabilities"] == ["live-memory", "snapshots"]
    assert data["acceleration"] == "kvm"


def test_json_of_a_list_of_records():
    assert json.loads(as_json([make_vm()]))[0]["name"] == "web"


def test_table_aligns_columns_and_trims_line_ends():
    out = table(["NAME", "STATE"], [["web", "running"], ["database", "stopped"]])
    assert out.splitlines() == [
        "NAME      STATE",
        "web       running",
        "database  stopped",
    ]


def test_table_with_no_rows_is_the_header():
    assert table(["NAME", "STATE"], []) == "NAME  STATE"


def test_vm_rows_show_pending_values():
    out = vm_rows([make_vm(pending_vcpus=6, pending_memory=4 * GiB)])
    assert "2 (next boot: 6)/4" in out
    assert "1GiB (next boot: 4GiB)/2GiB" in out


def test_vm_details_without_pending_changes_has_no_next_boot():
    out = vm_details(make_vm(), endpoint="tcp://127.0.0.1:41007")
    assert "Next boot" not in out
    assert "DOCKER_HOST  tcp://127.0.0.1:41007" in out
    assert "Created      2026-01-02T03:04:05+00:00" in out


def test_vm_details_with_pending_changes_lists_them():
    out = vm_details(make_vm(pending_vcpus=6, pending_max_memory=512 * MiB + 2 * GiB))
    assert out.splitlines()[-1] == "Next boot  vCPUs 6, max memory 2.5GiB"


def test_vm_details_values_line_up_after_the_longest_label():
    lines = vm_details(make_vm(), endpoint="tcp://127.0.0.1:41007").splitlines()
    assert lines[0] == "Name         web"
    assert all(line[11:13] == "  " and line[13] != " " for line in lines)


def test_vm_details_of_a_vm_dockvisor_did_not_create():
    out = vm_details(make_vm(template=None, disk_mode=None, created=None))
    assert "Template   - (not created by dockvisor)" in out
    assert "Disk       8GiB\n" in out
    assert "Created" not in out
