"""How the CLI prints records: aligned tables for people, JSON for programs."""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dockvisor.domain.model import VM, Capability, HostInfo, Snapshot, Spare, Template
from dockvisor.domain.sizes import format_size

__all__ = ["as_json", "table", "vm_details", "to_data"]


def to_data(value: Any) -> Any:
    """Records as plain JSON-able data."""
    if isinstance(value, Capability):
        return value.names()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, VM):
            data["has_pending_changes"] = value.has_pending_changes
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_data(v) for v in value]
    return value


def as_json(value: Any) -> str:
    return json.dumps(to_data(value), indent=2, sort_keys=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _pending(now: int, later: int | None, fmt: Any = str) -> str:
    return f"{fmt(now)} (next boot: {fmt(later)})" if later is not None else fmt(now)


def vm_rows(vms: Sequence[VM]) -> str:
    rows = [
        [
            vm.name,
            vm.power_state.value,
            _pending(vm.vcpus, vm.pending_vcpus) + f"/{vm.max_vcpus}",
            _pending(vm.memory, vm.pending_memory, format_size) + f"/{format_size(vm.max_memory)}",
            vm.template or "-",
            f"{format_size(vm.disk_size)} {vm.disk_mode or ''}".strip() if vm.disk_size else "-",
            str(vm.snapshot_count),
        ]
        for vm in vms
    ]
    return table(["NAME", "STATE", "VCPUS", "MEMORY", "TEMPLATE", "DISK", "SNAPSHOTS"], rows)


def vm_details(vm: VM, endpoint: str | None = None) -> str:
    lines = [
        ("Name", vm.name),
        ("UUID", vm.uuid),
        ("State", vm.power_state.value),
        ("vCPUs", f"{vm.vcpus} (max {vm.max_vcpus} without reboot)"),
        ("Memory", f"{format_size(vm.memory)} (max {format_size(vm.max_memory)} without reboot)"),
        ("Template", vm.template or "- (not created by dockvisor)"),
        ("Disk", f"{format_size(vm.disk_size)} {vm.disk_mode or ''}".strip()),
        ("Snapshots", str(vm.snapshot_count)),
        ("Docker", "yes" if vm.docker_ready else "no"),
    ]
    if endpoint:
        lines.append(("DOCKER_HOST", endpoint))
    if vm.created:
        lines.append(("Created", vm.created.isoformat(timespec="seconds")))
    pending = [
        f"{label} {fmt(value)}"
        for label, value, fmt in (
            ("vCPUs", vm.pending_vcpus, str),
            ("max vCPUs", vm.pending_max_vcpus, str),
            ("memory", vm.pending_memory, format_size),
            ("max memory", vm.pending_max_memory, format_size),
        )
        if value is not None
    ]
    if pending:
        lines.append(("Next boot", ", ".join(pending)))
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)


def _origin(t: Template) -> str:
    if t.origin is not None:
        return f"{t.origin.catalog}:{t.origin.product}:{t.origin.version}"
    return "built-in" if t.builtin else "added"


def template_rows(templates: Sequence[Template], newer: dict[str, str] | None = None) -> str:
    newer = newer or {}
    rows = [
        [
            t.name,
            format_size(t.disk_size),
            format_size(t.sizes.default_disk) if t.sizes.default_disk else "-",
            "yes" if t.docker_ready else "no",
            _origin(t),
            newer.get(t.name, "-"),
            str(t.spares_kept) if t.spares_kept else "-",
            t.description,
        ]
        for t in templates
    ]
    headers = ["NAME", "MIN DISK", "DEFAULT DISK", "DOCKER", "ORIGIN", "NEWER", "SPARES",
               "DESCRIPTION"]  # fmt: skip
    return table(headers, rows)


def spare_rows(spares: Sequence[Spare]) -> str:
    """`template spares`: the host's warm spares."""
    if not spares:
        return "no warm spares on this host (keep some with: dockvisor template warm NAME)"
    rows = [
        [
            s.template,
            s.name,
            "ready" if s.ready else f"stale: {s.stale}" if s.stale else "being made",
            f"{s.vcpus}/{s.max_vcpus}",
            f"{format_size(s.memory)}/{format_size(s.max_memory)}",
            format_size(s.disk_size),
            format_size(s.stored),
            s.created.strftime("%Y-%m-%d %H:%M") if s.created else "-",
        ]
        for s in spares
    ]
    total = format_size(sum(s.stored for s in spares))
    headers = ["TEMPLATE", "SPARE", "STATE", "VCPUS", "MEMORY", "DISK", "STORED", "SAVED"]
    return table(headers, rows) + f"\n{len(spares)} spare(s), {total} of the host's storage"


def catalog_rows(found: Sequence[dict[str, Any]]) -> str:
    """`template search`: what catalogs offer (as the API and --json give it)."""
    rows = [
        [
            f"{t['catalog']}:{t['name']}",
            t["version"],
            t["arch"],
            t["docker_version"] or "-",
            f"{t['sizes']['min_vcpus']} / {format_size(t['sizes']['min_memory'])} / "
            f"{format_size(t['min_disk'])}",
            format_size(t["download_size"]),
            t["description"],
        ]
        for t in found
    ]
    headers = ["TEMPLATE", "VERSION", "ARCH", "DOCKER", "MIN VCPU/MEM/DISK", "DOWNLOAD",
               "DESCRIPTION"]  # fmt: skip
    return table(headers, rows)


def snapshot_rows(snapshots: Sequence[Snapshot]) -> str:
    rows = [
        [
            s.name + (" *" if s.current else ""),
            s.created.strftime("%Y-%m-%d %H:%M:%S"),
            s.power_state.value,
            "yes" if s.with_memory else "no",
            format_size(s.disk_size) if s.disk_size else "-",
            s.parent or "-",
            s.description,
        ]
        for s in snapshots
    ]
    headers = ["NAME", "CREATED (UTC)", "VM STATE", "MEMORY", "DISK", "PARENT", "DESCRIPTION"]
    return table(headers, rows)


def host_details(host: HostInfo) -> str:
    lines = [
        ("URI", host.uri),
        ("Hypervisor", f"{host.hypervisor} {host.version}"),
        ("Host", host.hostname),
        ("CPUs", str(host.cpus)),
        ("Memory", format_size(host.memory)),
        ("vCPUs per VM", f"up to {host.max_vcpus_per_vm}"),
        ("Acceleration", host.acceleration or "-"),
        ("Capabilities", ", ".join(host.capabilities.names()) or "-"),
    ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in lines)
