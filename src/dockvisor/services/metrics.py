"""VM and container metrics: what the graphs of a VM's page and its Docker tab show.

The server samples, whether or not anyone looks: every `period` seconds (Settings
`metrics_every`, 10 s by default) a background thread asks each host for the counters
of all its running VMs in one request, and keeps the last hour of points of each VM the
inventory knows, in memory (KEEP_SECONDS / period + 1 points per VM; the points of a VM
that is deleted, or has not run for an hour, are dropped). A server restart starts the
graphs afresh.

A host that cannot be read is logged once (`metrics.read-failed`, with the host and the
error) and again when its error changes, and its recovery too (`metrics.read-recovered`),
rather than every period; an unexpected failure is logged with its traceback every time.
A host whose adapter declares no METRICS capability is not asked (said once:
`metrics.unsupported`); its VMs have empty graphs.

Reading checks VM.View on the VM (a VM the caller cannot view does not exist for them);
container usage checks Docker.View, through the Docker service, and asks the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select

from dockvisor.domain.metrics import (
    KEEP_SECONDS,
    UsageCounters,
    UsageHistory,
    container_usage,
    series,
)
from dockvisor.domain.model import Capability
from dockvisor.errors import DockvisorError, HypervisorUnreachable, InvalidInput
from dockvisor.services.docker import DockerOperations
from dockvisor.services.identity import Principal
from dockvisor.services.operations import Operations
from dockvisor.store.models import VmRow

__all__ = ["MAX_MINUTES", "Metrics", "VmMetrics"]

log = logging.getLogger(__name__)

MAX_MINUTES = int(KEEP_SECONDS // 60)
_STATS_AT_ONCE = 8  # engine stats requests in flight for one VM's containers


@dataclass(frozen=True)
class VmMetrics:
    period: float  # seconds between samples
    series: dict[str, list[Any]]  # domain/metrics.py SERIES_FIELDS, nulls for gaps


class Metrics:
    def __init__(self, ops: Operations, docker: DockerOperations, *, period: float) -> None:
        if period <= 0:
            raise ValueError("the metrics period must be positive")
        self.period = period
        self._ops = ops
        self._docker = docker
        self._lock = threading.Lock()  # the histories
        self._round = threading.Lock()  # one sampling round at a time
        self._histories: dict[str, UsageHistory] = {}
        self._failing: dict[int, str] = {}  # host id: the error last logged for it
        self._unsupported: set[int] = set()  # hosts whose adapter lacks METRICS
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sampling ------------------------------------------------------------------------

    def start(self) -> None:
        """Sample every period in a background thread, until `stop`."""
        if self.running and not self._stop.is_set():
            return
        self._stop = stop = threading.Event()  # its own: an old thread still ending stays so
        self._thread = threading.Thread(target=self._run, args=(stop,), name="metrics",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """End the sampler; waits at most `timeout` seconds for a round under way (the
        thread is a daemon: a hypervisor slow to answer does not hold the server)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the sampler's thread is alive (it ends after `stop` once a round
        under way returns)."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self, stop: threading.Event) -> None:
        due = time.monotonic()
        while not stop.is_set():
            try:  # one failed round must not end the sampler; it is logged
                self.sample()
            except Exception:
                if not stop.is_set():  # a round cut short by the server stopping
                    log.exception("metrics.sample-failed")
            # The next round a period after this one was due, and never less than half a
            # period after this one ended (a late round does not make two close points).
            due = max(due + self.period, time.monotonic() + self.period / 2)
            stop.wait(max(due - time.monotonic(), 0.0))

    def sample(self) -> int:
        """One round: read every host that has VMs, add a point to each running VM's
        history, drop the histories of VMs gone or idle for an hour. The number of VMs
        sampled."""
        with self._round:
            with self._ops.db.read() as session:
                rows = session.execute(select(VmRow.id, VmRow.host_id, VmRow.hv_uuid)).all()
            by_host: dict[int, dict[str, str]] = defaultdict(dict)
            for vm_id, host_id, hv_uuid in rows:
                if hv_uuid:
                    by_host[host_id][hv_uuid] = vm_id
            sampled = 0
            for host_id, vms in sorted(by_host.items()):
                counters = self._read(host_id)
                with self._lock:
                    for hv_uuid, reading in counters.items():
                        if hv_uuid in vms:
                            self._history(vms[hv_uuid]).add(reading)
                            sampled += 1
            self._forget(known={vm_id for vm_id, _, _ in rows})
            return sampled

    def _read(self, host_id: int) -> dict[str, UsageCounters]:
        """The counters of the host's running VMs; {} (logged) if it cannot be read."""
        hosts = self._ops.hosts
        try:
            driver = hosts.driver(host_id)
            if Capability.METRICS not in driver.capabilities:  # said once: no graphs there
                if host_id not in self._unsupported:
                    self._unsupported.add(host_id)
                    log.info("metrics.unsupported", extra={"host": host_id, "uri": driver.uri})
                return {}
            counters = driver.usage_counters()
        except DockvisorError as exc:
            if isinstance(exc, HypervisorUnreachable):
                hosts.answered(host_id, exc)
            self._failed(host_id, str(exc))
            return {}
        except Exception:  # one bad host must not end the round
            if not self._stop.is_set():
                log.exception("metrics.read-failed", extra={"host": host_id})
            return {}
        hosts.answered(host_id)
        if self._failing.pop(host_id, None) is not None:
            log.info("metrics.read-recovered", extra={"host": host_id})
        return counters

    def _failed(self, host_id: int, error: str) -> None:
        if self._stop.is_set() or self._failing.get(host_id) == error:
            return
        self._failing[host_id] = error
        log.warning("metrics.read-failed", extra={"host": host_id, "error": error})

    def _history(self, vm_id: str) -> UsageHistory:
        history = self._histories.get(vm_id)
        if history is None:
            history = self._histories[vm_id] = UsageHistory(self.period)
        return history

    def _forget(self, *, known: set[str]) -> None:
        """Drop the histories of VMs the inventory no longer has, and of VMs whose last
        point is older than the graphs go back."""
        oldest = time.time() - KEEP_SECONDS
        with self._lock:
            for vm_id, history in list(self._histories.items()):
                newest = history.newest
                if vm_id not in known or newest is None or newest < oldest:
                    del self._histories[vm_id]

    def history_count(self) -> int:
        """How many VMs have a history kept (for tests and the server's own health)."""
        with self._lock:
            return len(self._histories)

    # -- reading ---------------------------------------------------------------------------

    def vm_metrics(self, who: Principal, vm_id: str, *, minutes: int = MAX_MINUTES) -> VmMetrics:
        """The VM's graphs over the last `minutes` (1 to 60); NotFound unless `who` holds
        VM.View on it."""
        if not 1 <= minutes <= MAX_MINUTES:
            raise InvalidInput(f"minutes must be from 1 to {MAX_MINUTES}")
        row = self._ops.vm_row(who, vm_id)
        now = time.time()
        with self._lock:
            history = self._histories.get(row.id)
            points = history.points(since=now - minutes * 60) if history else []
        return VmMetrics(self.period, series(points, period=self.period, until=now))

    def container_usage(self, who: Principal, vm_id: str, container: str) -> dict[str, Any]:
        """A container's CPU and memory now, as `docker stats` shows them (Docker.View;
        the engine takes about a second: it measures CPU over that time)."""
        stats = self._docker.stats(who, vm_id, container)
        usage = container_usage(stats)
        return {
            "id": str(stats.get("id", "")),
            "name": str(stats.get("name", "")).lstrip("/"),
            **asdict(usage),
        }

    def containers_usage(self, who: Principal, vm_id: str) -> list[dict[str, Any]]:
        """The CPU and memory of each running container of the VM, measured together
        (a container that stops meanwhile has nulls)."""
        running = self._docker.list_containers(who, vm_id, all=False)

        def measure(container: dict[str, Any]) -> dict[str, Any]:
            try:
                usage = self.container_usage(who, vm_id, container["id"])
            except DockvisorError:
                return {"id": container["id"], "name": container["name"], "cpu_percent": None,
                        "memory_used": None, "memory_limit": None, "online_cpus": None}  # fmt: skip
            return {**usage, "name": container["name"]}

        if not running:
            return []
        with ThreadPoolExecutor(min(len(running), _STATS_AT_ONCE), "container-stats") as pool:
            return list(pool.map(measure, running))
