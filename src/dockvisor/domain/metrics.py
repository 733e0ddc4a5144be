"""VM and container metrics: the counters hypervisors and engines report, and the rules
that turn them into the points of a graph.

A hypervisor reports cumulative counters of a running VM (CPU time, bytes read and
written, bytes received and sent) and its memory now. Two consecutive readings make one
point: CPU as a percentage of the VM's vCPUs, the other counters as bytes per second.
A counter that went down means the VM restarted (a reboot, a revert) between the two
readings: that point has no rates, never a negative one. A VM that is not running gives
no readings, so its graph has a gap; `series` marks each gap with a row of nulls, which
chart libraries draw as a break in the line.

Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KEEP_SECONDS",
    "SERIES_FIELDS",
    "ContainerUsage",
    "MetricsPoint",
    "UsageCounters",
    "UsageHistory",
    "container_usage",
    "point_between",
    "series",
]

KEEP_SECONDS = 3600.0  # how far back a VM's graphs go
SERIES_FIELDS = (
    "time", "cpu_percent", "memory_used", "memory_total",
    "disk_read", "disk_write", "net_rx", "net_tx",
)  # fmt: skip
# Readings further apart than this many periods make no rate: the VM (or the sampler)
# was away in between, and an average over that time would draw a line across the gap.
_GAP_PERIODS = 2.5


@dataclass(frozen=True, slots=True)
class UsageCounters:
    """One reading of a running VM. Counters are cumulative since its hypervisor process
    started; None where the hypervisor (or the guest) does not say."""

    time: float  # when read, seconds since the epoch
    cpu_time_ns: int  # CPU time the VM has used, all vCPUs together
    vcpus: int
    memory_total: int  # bytes the VM has now
    memory_used: int | None  # bytes the guest uses (or the host holds for it)
    disk_read: int | None  # bytes, all disks together
    disk_write: int | None
    net_rx: int | None  # bytes, the VM's network card
    net_tx: int | None


@dataclass(frozen=True, slots=True)
class MetricsPoint:
    """One point of a VM's graphs: rates over the time since the reading before."""

    time: float
    cpu_percent: float | None  # of the VM's vCPUs: 0 to 100
    memory_used: int | None  # bytes
    memory_total: int | None  # bytes
    disk_read: float | None  # bytes per second
    disk_write: float | None
    net_rx: float | None
    net_tx: float | None

    @classmethod
    def gap(cls, time: float) -> MetricsPoint:
        """No data at `time` (a break in the graph)."""
        return cls(time, None, None, None, None, None, None, None)


def _rate(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) / seconds, 1)


def _went_down(before: UsageCounters, after: UsageCounters) -> bool:
    pairs = (
        (before.cpu_time_ns, after.cpu_time_ns),
        (before.disk_read, after.disk_read),
        (before.disk_write, after.disk_write),
        (before.net_rx, after.net_rx),
        (before.net_tx, after.net_tx),
    )
    return any(b is not None and a is not None and a < b for b, a in pairs)


def point_between(
    before: UsageCounters | None, after: UsageCounters, *, max_interval: float
) -> MetricsPoint:
    """The point of `after`: its memory, and rates since `before`. No rates (None) without
    a reading before, with one more than `max_interval` seconds before (or not before at
    all), or when a counter went down (the VM restarted in between)."""
    used = after.memory_used
    if used is not None:
        used = max(0, min(used, after.memory_total))
    memory = (used, after.memory_total)
    seconds = after.time - before.time if before is not None else 0.0
    if before is None or not 0 < seconds <= max_interval or _went_down(before, after):
        return MetricsPoint(after.time, None, *memory, None, None, None, None)
    capacity = seconds * 1e9 * max(after.vcpus, 1)
    cpu = (after.cpu_time_ns - before.cpu_time_ns) / capacity * 100
    return MetricsPoint(
        after.time,
        round(min(max(cpu, 0.0), 100.0), 2),
        *memory,
        _rate(before.disk_read, after.disk_read, seconds),
        _rate(before.disk_write, after.disk_write, seconds),
        _rate(before.net_rx, after.net_rx, seconds),
        _rate(before.net_tx, after.net_tx, seconds),
    )


class UsageHistory:
    """The last hour of one VM's points, sampled every `period` seconds: a ring of at
    most KEEP_SECONDS / period + 1 points, and the reading the next rate starts from.
    Not thread-safe: its owner locks."""

    def __init__(self, period: float, keep: float = KEEP_SECONDS) -> None:
        if period <= 0:
            raise ValueError("the sampling period must be positive")
        self.period = period
        self._points: deque[MetricsPoint] = deque(maxlen=math.ceil(keep / period) + 1)
        self._last: UsageCounters | None = None

    def __len__(self) -> int:
        return len(self._points)

    def add(self, counters: UsageCounters) -> MetricsPoint:
        """Record a reading; the point it makes."""
        point = point_between(self._last, counters, max_interval=self.period * _GAP_PERIODS)
        self._last = counters
        self._points.append(point)
        return point

    @property
    def newest(self) -> float | None:
        """When the last point was taken (None: no point yet)."""
        return self._points[-1].time if self._points else None

    def points(self, since: float = 0.0) -> list[MetricsPoint]:
        return [p for p in self._points if p.time >= since]


def series(
    points: Iterable[MetricsPoint], *, period: float, until: float | None = None
) -> dict[str, list[Any]]:
    """Points as a chart takes them: one list per field (SERIES_FIELDS), in time order,
    with a row of nulls one period after each point that the next one does not follow
    within 2.5 periods, and after the last one if it is that old at `until` (the VM
    stopped, or is not running now)."""
    rows: list[MetricsPoint] = []
    limit = period * _GAP_PERIODS
    for point in sorted(points, key=lambda p: p.time):
        if rows and point.time - rows[-1].time > limit:
            rows.append(MetricsPoint.gap(rows[-1].time + period))
        rows.append(point)
    if rows and until is not None and until - rows[-1].time > limit:
        rows.append(MetricsPoint.gap(rows[-1].time + period))
    return {
        name: [round(p.time, 3) if name == "time" else getattr(p, name) for p in rows]
        for name in SERIES_FIELDS
    }


# -- containers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerUsage:
    """A container's CPU and memory, as `docker stats` shows them."""

    cpu_percent: float | None  # of one CPU as docker stats counts (to 100 x online CPUs)
    memory_used: int  # bytes, without the page cache the kernel can drop at once
    memory_limit: int  # bytes: the container's limit, or the VM's memory without one
    online_cpus: int


def _number(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value > 0 else 0


def container_usage(stats: Mapping[str, Any]) -> ContainerUsage:
    """From one document of the Engine API's `GET /containers/{id}/stats?stream=false`:
    CPU as the container's share of the CPU time all the engine's CPUs spent between the
    document's two readings (`precpu_stats`, `cpu_stats`), times the number of CPUs (None
    without a first reading: `one-shot` stats); memory as its usage minus its inactive
    file pages (`inactive_file` under cgroup v2, `total_inactive_file` under v1)."""
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    cpu_usage, pre_usage = cpu.get("cpu_usage") or {}, pre.get("cpu_usage") or {}
    online = _number(cpu.get("online_cpus")) or len(cpu_usage.get("percpu_usage") or []) or 1
    container_delta = _number(cpu_usage.get("total_usage")) - _number(pre_usage.get("total_usage"))
    system_delta = _number(cpu.get("system_cpu_usage")) - _number(pre.get("system_cpu_usage"))
    percent: float | None = None
    if _number(pre.get("system_cpu_usage")) > 0 and system_delta > 0:
        percent = round(max(container_delta, 0) / system_delta * online * 100, 2)
    memory = stats.get("memory_stats") or {}
    usage = _number(memory.get("usage"))
    details = memory.get("stats") or {}
    inactive = details.get("total_inactive_file", details.get("inactive_file"))
    if isinstance(inactive, int) and 0 <= inactive < usage:
        usage -= inactive
    return ContainerUsage(
        cpu_percent=percent,
        memory_used=usage,
        memory_limit=_number(memory.get("limit")),
        online_cpus=online,
    )
