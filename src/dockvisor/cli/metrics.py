"""`dockvisor vm metrics NAME`: a VM's CPU, memory, disk and network now.

Through a server (--server): the newest point of the graphs the server samples (VM.View
on the VM). On the hypervisor host: two readings of the hypervisor's counters a second
apart (`--seconds`), turned into a point by the same rules (domain/metrics.py).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from dockvisor.cli.backends import RemoteBackend
from dockvisor.domain.metrics import SERIES_FIELDS, point_between
from dockvisor.domain.sizes import format_size
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.errors import BadPowerState

__all__ = ["describe", "metrics"]


@click.command("metrics")
@click.argument("name")
@click.option(
    "--seconds",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="On the host: how long to measure (with --server: the server's own period).",
)
@click.pass_context
def metrics(ctx: click.Context, name: str, seconds: float) -> None:
    """Show the VM's CPU, memory, disk and network now (the latest sample)."""
    root: Any = ctx.find_root().obj
    if root.server:
        backend = root.backend
        assert isinstance(backend, RemoteBackend)
        point = _from_server(backend, name)
    else:
        point = _from_host(root.driver, name, seconds)
    root.emit(point, lambda: describe(name, point))


def _from_server(backend: RemoteBackend, name: str) -> dict[str, Any]:
    vm_id = backend._id(name)
    body = backend.api.request("GET", f"/vms/{vm_id}/metrics", params={"minutes": 1})
    series = body["series"]
    rows = [dict(zip(series, values, strict=True)) for values in zip(*series.values(), strict=True)]
    if not rows or rows[-1]["memory_total"] is None:
        raise BadPowerState(f"VM {name!r} has no recent sample: it is not running")
    return {**rows[-1], "period": body["period"]}


def _from_host(driver: HypervisorDriver, name: str, seconds: float) -> dict[str, Any]:
    vm_id = driver.get_vm(name).uuid  # NotFound for a VM that does not exist
    before = driver.usage_counters().get(vm_id)
    time.sleep(seconds)
    after = driver.usage_counters().get(vm_id)
    if before is None or after is None:
        raise BadPowerState(f"VM {name!r} is not running")
    point = point_between(before, after, max_interval=seconds * 10)
    return {**{f: getattr(point, f) for f in SERIES_FIELDS}, "period": seconds}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{format_size(round(value))}/s"


def describe(name: str, point: dict[str, Any]) -> str:
    """A point for reading, one line per resource."""
    when = datetime.fromtimestamp(point["time"]).strftime("%H:%M:%S")
    cpu = point["cpu_percent"]
    used, total = point["memory_used"], point["memory_total"]
    memory = "-" if total is None else format_size(total)
    if used is not None and total:
        memory = f"{format_size(used)} of {memory} ({used / total:.0%})"
    return "\n".join(
        [
            f"{name} at {when} (over {point['period']:g} s)",
            f"cpu      {'-' if cpu is None else f'{cpu:.1f}%'} of its vCPUs",
            f"memory   {memory}",
            f"disk     read {_rate(point['disk_read'])}, write {_rate(point['disk_write'])}",
            f"network  received {_rate(point['net_rx'])}, sent {_rate(point['net_tx'])}",
        ]
    )
