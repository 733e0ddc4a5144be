"""The server's template catalogs: who may add them, search them and pull from them.

Every catalog use case needs Sys.Modify on /: adding a catalog decides whose signed
templates the server trusts; searching makes the server fetch from outside; a pull or
update registers a template on hosts, where every VM creator may use it and it takes
the hosts' storage (registering a template from files needs the same).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dockvisor.domain.catalog import CatalogTemplate, parse_reference
from dockvisor.domain.model import Template
from dockvisor.domain.naming import validate_template_name
from dockvisor.domain.privileges import Privilege
from dockvisor.errors import Busy, InvalidInput
from dockvisor.services import catalogs
from dockvisor.services.access import ROOT
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.services.tasks import TaskContext, TaskInfo

__all__ = ["SEARCHES", "CatalogAdministration"]

P = Privilege
SEARCHES = 2
_searching = threading.BoundedSemaphore(SEARCHES)


class CatalogAdministration:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.book = catalogs.DbCatalogBook(cp.db)

    def _require(self, who: Principal) -> None:
        self.cp.access.require(who, P.SYS_MODIFY, ROOT)

    def list_catalogs(self, who: Principal) -> list[catalogs.CatalogRecord]:
        self._require(who)
        return self.book.all()

    def add_catalog(self, who: Principal, *, name: str, url: str,
                    public_key: str) -> catalogs.CatalogRecord:  # fmt: skip
        with self.cp.ops.audited(who, "catalog.add", f"catalog:{name}"):
            self._require(who)
            return catalogs.add_catalog(self.book, name=name, url=url, public_key=public_key)

    def remove_catalog(self, who: Principal, name: str) -> None:
        with self.cp.ops.audited(who, "catalog.remove", f"catalog:{name}"):
            self._require(who)
            self.book.remove(name)

    def search(
        self, who: Principal, text: str = ""
    ) -> tuple[list[tuple[str, CatalogTemplate]], list[str]]:
        """What the catalogs offer now. At most SEARCHES run at once (each may wait on
        slow catalogs up to their deadline, in a worker the server shares): more are
        refused (Busy), never queued."""
        self._require(who)
        if not _searching.acquire(blocking=False):
            raise Busy(f"{SEARCHES} catalog searches are running; try again when they end")
        try:
            return catalogs.search_catalogs(self.book, text)
        finally:
            _searching.release()

    def newer_version(self, template: Template) -> str | None:
        return catalogs.newer_version(self.book, template)

    def _host_ids(self, host_id: int | None, all_hosts: bool) -> list[int]:
        known = self.cp.hosts.ids()
        if all_hosts:
            if host_id is not None:
                raise InvalidInput("give a host or all hosts, not both")
            return list(known)
        if host_id is None:
            if not known:
                raise InvalidInput("the server has no host to register the template on")
            return [known[0]]
        if host_id not in known:
            raise InvalidInput(f"no host {host_id}")
        return [host_id]

    def pull(
        self,
        who: Principal,
        reference: str,
        *,
        as_name: str | None = None,
        host_id: int | None = None,
        all_hosts: bool = False,
    ) -> TaskInfo:
        """A task that pulls CATALOG:NAME[:VERSION] onto the host (the first one by
        default) or every host, all or nothing."""
        with self.cp.ops.audited(who, "template.pull", f"catalog-template:{reference}"):
            self._require(who)
            host_ids = self._host_ids(host_id, all_hosts)
            _, product, _ = parse_reference(reference)
            name = as_name or product
            validate_template_name(name)

            def work(ctx: TaskContext) -> dict[str, Any]:
                drivers = [self.cp.hosts.driver(h) for h in host_ids]
                pulled = catalogs.pull_template(
                    drivers, self.book, reference, as_name=as_name, progress=ctx.progress
                )
                origin = pulled[0].origin
                version = origin.version if origin else None
                return {"template": pulled[0].name, "hosts": host_ids, "version": version}

            return self._submit(who, "template.pull", name, host_ids, work)

    def update(self, who: Principal, name: str, *, host_id: int | None = None) -> TaskInfo:
        """A task that replaces a pulled template by its catalog's newest version; VMs
        made from the old one keep their disks."""
        with self.cp.ops.audited(who, "template.update", f"template:{name}"):
            self._require(who)
            (hid,) = self._host_ids(host_id, False)
            driver = self.cp.hosts.driver(hid)
            current = driver.get_template(name)  # NotFound before any task
            if current.origin is None:
                raise InvalidInput(f"template {name!r} was not pulled from a catalog")

            def work(ctx: TaskContext) -> dict[str, Any]:
                template, changed = catalogs.update_template(
                    driver, self.book, name, progress=ctx.progress, engines=self.cp.engines
                )
                version = template.origin.version if template.origin else None
                return {"template": name, "host": hid, "version": version, "changed": changed}

            return self._submit(who, "template.update", name, [hid], work)

    def _submit(
        self,
        who: Principal,
        kind: str,
        name: str,
        host_ids: list[int],
        work: Callable[[TaskContext], dict[str, Any]],
    ) -> TaskInfo:
        """Run `work` as a task on template `name`, holding it on each of the hosts."""
        return self.cp.tasks.submit(
            kind=kind,
            object_type="template",
            object_id=name,
            chain=("/",),
            requester=who,
            locks=[f"template:{h}:{name}" for h in host_ids],
            work=work,
        )
