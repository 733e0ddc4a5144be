"""Enforcing a route's declared Requirement (domain/requirements.py) for a caller.

The API runs `Guard.check` before a route's handler, so the declaration is the check
that runs, and it runs before any request body is read: a caller without the privilege
is refused before they can make the server spool a byte. The services still check what
depends on the body (which host, which size), with the same access policy.
"""

from __future__ import annotations

from typing import Any

from dockvisor.domain.privileges import Privilege
from dockvisor.domain.requirements import Requirement
from dockvisor.errors import DockvisorError, Forbidden, NotFound
from dockvisor.services.access import ROOT, AccessPolicy
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import chain_of_path
from dockvisor.store.db import Database

__all__ = ["Guard"]

P = Privilege


class Guard:
    def __init__(self, db: Database, access: AccessPolicy) -> None:
        self._db = db
        self._access = access

    def check(self, who: Principal, requirement: Requirement, params: dict[str, Any]) -> None:
        """Return if `who` meets `requirement` for a request with these path parameters;
        NotFound for an object they cannot see, Forbidden naming what they lack."""
        if requirement.check in ("public", "user"):
            return
        wanted = requirement.privileges
        if requirement.check == "somewhere":
            if not self.holds_somewhere(who, wanted):
                names = " or ".join(sorted(p.value for p in wanted))
                raise Forbidden(f"{who.name} holds {names} nowhere")
            return
        path = requirement.object_path(params)
        chain = self._chain(who, path)
        held = self._access.privileges(who, chain)
        if not requirement.met_by(held):
            names = " or ".join(sorted(p.value for p in wanted))
            if not requirement.any_of:
                names = ", ".join(sorted(p.value for p in wanted - held))
            raise Forbidden(f"{who.name} lacks {names} on {path}")

    def _chain(self, who: Principal, path: str) -> tuple[str, ...]:
        if path == "/":
            return ROOT
        try:
            with self._db.read() as session:
                chain = chain_of_path(session, path)
        except DockvisorError:  # a malformed or unknown id: no such object
            raise NotFound(f"no {_kind(path)} {path.rsplit('/', 1)[-1]}") from None
        if path.startswith("/vms/") and not self._access.allows(who, P.VM_VIEW, chain):
            raise NotFound(f"no VM {path.rsplit('/', 1)[-1]}")  # as if it never was
        return chain

    def holds_somewhere(self, who: Principal, wanted: frozenset[Privilege]) -> bool:
        """True if `who` holds one of `wanted` on some object (a resource set they are
        a subject of counts for VM.Allocate)."""
        if P.VM_ALLOCATE in wanted and self._access.resource_sets_of(who):
            return True
        if wanted & self._access.privileges(who, ROOT):
            return True
        # Entries above VMs first: their chain needs no lookup.
        paths = sorted(self._access.entry_paths(who), key=lambda p: p.startswith("/vms/"))
        for path in paths:
            if path == "/":
                continue
            try:
                if path.startswith("/vms/"):
                    with self._db.read() as session:
                        chain = chain_of_path(session, path)
                else:
                    chain = ("/", path)
            except DockvisorError:
                continue
            if wanted & self._access.privileges(who, chain):
                return True
        return False


def _kind(path: str) -> str:
    return {"vms": "VM", "hosts": "host", "pools": "pool", "resource-sets": "resource set"}.get(
        path.strip("/").split("/")[0], "object"
    )
