"""Warm spares of a template: how many a host keeps, made and removed here.

A spare is booted with an identity of its own (its engine certificate is issued here,
like any VM's), saved once its Docker engine is up, and waits stopped until a create
adopts it (vms.create_vm_from_template). Its size: the template's fewest vCPUs and its
default memory, with room to grow live to the host's most vCPUs per VM and twice the
template's default memory, and the template's default disk; an adopting create plugs the asked
vCPUs and memory in live and grows the disk. A VM asked larger than that, or with
maximums of its own, boots cold.

What spares cost is the host's, never a user's: each holds its disk overlay and saved
memory on the host's storage (`template spares` shows the bytes) and booting one takes a
host CPU for about half a minute (under TCG).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from dockvisor.domain.model import Capability, Spare, Template, VMSpec
from dockvisor.domain.naming import new_spare_name
from dockvisor.domain.sizing import plan_spare
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.errors import DockvisorError, InvalidInput, NotFound, Unsupported
from dockvisor.services.engines import EngineAccess

__all__ = [
    "MAX_SPARES",
    "Refiller",
    "keep_warm_after_change",
    "refill",
    "spare_spec",
    "spares_of",
    "warm_template",
]

log = logging.getLogger(__name__)

MAX_SPARES = 32


def spares_of(driver: HypervisorDriver, template: str | None = None) -> list[Spare]:
    return [s for s in driver.list_spares() if template is None or s.template == template]


def spare_spec(driver: HypervisorDriver, template: Template, name: str,
               engines: EngineAccess) -> VMSpec:  # fmt: skip
    plan = plan_spare(driver.host_info(), template)
    return VMSpec(
        name=name,
        template=template.name,
        vcpus=plan.size.vcpus,
        memory=plan.size.memory,
        max_vcpus=plan.size.max_vcpus,
        max_memory=plan.size.max_memory,
        guest=engines.guest_config(name) if template.docker_ready else None,
        disk_size=plan.disk,
    )


def warm_template(
    driver: HypervisorDriver,
    template: str,
    spares: int,
    *,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> list[Spare]:
    """Make the host keep `spares` ready spares of `template` (recorded with the
    template: a server refills them after each warm create, and a new version of the
    template gets as many): delete stale and extra ones, boot and save the missing ones
    one after the other. The template's spares afterwards."""
    if not 0 <= spares <= MAX_SPARES:
        raise InvalidInput(f"spares must be 0 to {MAX_SPARES} (got {spares})")
    driver.get_template(template)
    if spares and Capability.WARM_SPARES not in driver.capabilities:
        raise Unsupported(f"host {driver.uri} cannot keep warm spares: its VMs boot cold")
    driver.keep_spares(template, spares)
    return refill(driver, template, progress=progress, engines=engines)


def refill(
    driver: HypervisorDriver,
    template: str,
    *,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> list[Spare]:
    """Bring `template`'s spares to the count the host keeps: stale ones deleted,
    extra ones deleted, missing ones made. The template's spares afterwards."""
    with _refilling(driver.uri, template):
        tmpl = driver.get_template(template)
        engines = engines or EngineAccess.default()
        have = []  # ready, or being made (by another process of this host)
        for spare in spares_of(driver, template):
            if spare.stale:
                progress(f"deleting stale spare {spare.name}: {spare.stale}", 0.0)
                with suppress(NotFound):
                    driver.delete_spare(spare.name)
            else:
                have.append(spare)
        for extra in [s for s in have if s.ready][tmpl.spares_kept :]:
            with suppress(NotFound):  # (adopted meanwhile)
                driver.delete_spare(extra.name)
        missing = max(0, tmpl.spares_kept - len(have))
        for i in range(missing):
            name = new_spare_name()
            spec = spare_spec(driver, tmpl, name, engines)

            def step(what: str, fraction: float, i: int = i) -> None:
                progress(f"spare {i + 1} of {missing}: {what}", (i + fraction) / missing)

            driver.create_spare(spec, progress=step)
        progress("warm", 1.0)
        return spares_of(driver, template)


_refills: dict[tuple[str, str], threading.Lock] = {}
_refills_lock = threading.Lock()


@contextmanager
def _refilling(uri: str, template: str) -> Iterator[None]:
    """One refill of a host's template at a time in this process (a `template warm`
    task, the server's refill after a create, an update): each counts what the one
    before made."""
    with _refills_lock:
        lock = _refills.setdefault((uri, template), threading.Lock())
    with lock:
        yield


def keep_warm_after_change(driver: HypervisorDriver, template: str, spares: int, *,
                           progress: Progress, engines: EngineAccess | None) -> None:  # fmt: skip
    """After a template changed (a new build or version): make its spares again from
    it. A failure is said, not raised: the template itself is in place."""
    try:
        warm_template(driver, template, spares, progress=progress, engines=engines)
    except DockvisorError as exc:
        progress(f"the warm spares of {template} could not be made: {exc}", 1.0)
        log.warning("warm spares of %s on %s: %s", template, driver.uri, exc)


class Refiller:
    """A server's background refills: after a warm create, the host makes spares of the
    template again up to the count it keeps, one refill per host and template at a time
    (a request while one runs is folded into it). The refill runs on a daemon thread (it
    never holds a request or the server's shutdown); a spare cut off by a stop is removed
    when spares are next listed."""

    def __init__(self, driver_of: Callable[[int], HypervisorDriver], engines: EngineAccess
                 ) -> None:  # fmt: skip
        self._driver_of = driver_of
        self._engines = engines
        self._lock = threading.Lock()
        self._running: dict[tuple[int, str], bool] = {}  # key -> asked again meanwhile

    def request(self, host_id: int, template: str) -> None:
        key = (host_id, template)
        with self._lock:
            if key in self._running:
                self._running[key] = True
                return
            self._running[key] = False
        threading.Thread(target=self._run, args=(key,), daemon=True,
                         name=f"refill-{host_id}-{template}").start()  # fmt: skip

    def _run(self, key: tuple[int, str]) -> None:
        host_id, template = key
        while True:
            try:
                driver = self._driver_of(host_id)
                if driver.get_template(template).spares_kept:
                    refill(driver, template, engines=self._engines)
            except DockvisorError as exc:
                log.warning("refilling warm spares of %s on host %s: %s", template, host_id, exc)
            except Exception:
                log.exception("refilling warm spares of %s on host %s", template, host_id)
            with self._lock:
                if not self._running[key]:
                    del self._running[key]
                    return
                self._running[key] = False
