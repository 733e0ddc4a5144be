"""The server's warm spares: how many a host keeps of a template, and what they cost.

Keeping spares (`warm`) needs Sys.Modify on /, like registering a template: spares take
the host's storage and CPU, for every user's creates. Seeing them (`spares`) needs
Sys.Audit on /: what the host spends, by template.
"""

from __future__ import annotations

from typing import Any

from dockvisor.domain.model import Spare
from dockvisor.domain.privileges import Privilege
from dockvisor.errors import InvalidInput
from dockvisor.services import warm
from dockvisor.services.access import ROOT
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane
from dockvisor.services.tasks import TaskContext, TaskInfo

__all__ = ["SpareAdministration"]

P = Privilege


class SpareAdministration:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def _host(self, host_id: int | None) -> int:
        known = self.cp.hosts.ids()
        if host_id is None:
            if not known:
                raise InvalidInput("the server has no host")
            return known[0]
        if host_id not in known:
            raise InvalidInput(f"no host {host_id}")
        return host_id

    def spares(self, who: Principal) -> list[tuple[int, Spare]]:
        """Every host's spares, with the host's id."""
        self.cp.access.require(who, P.SYS_AUDIT, ROOT)
        found = []
        for host_id in self.cp.hosts.ids():
            found += [(host_id, s) for s in self.cp.hosts.driver(host_id).list_spares()]
        return found

    def warm(self, who: Principal, template: str, spares: int, *,
             host_id: int | None = None) -> TaskInfo:  # fmt: skip
        """A task that makes the host keep `spares` spares of `template` (warm.py)."""
        with self.cp.ops.audited(who, "template.warm", f"template:{template}"):
            self.cp.access.require(who, P.SYS_MODIFY, ROOT)
            if not 0 <= spares <= warm.MAX_SPARES:
                raise InvalidInput(f"spares must be 0 to {warm.MAX_SPARES} (got {spares})")
            hid = self._host(host_id)
            driver = self.cp.hosts.driver(hid)
            driver.get_template(template)  # NotFound before any task

            def work(ctx: TaskContext) -> dict[str, Any]:
                kept = warm.warm_template(driver, template, spares, progress=ctx.progress,
                                          engines=self.cp.engines)  # fmt: skip
                ready = [s for s in kept if s.ready]
                return {"template": template, "host": hid, "spares": len(ready),
                        "stored": sum(s.stored for s in kept)}  # fmt: skip

            return self.cp.tasks.submit(
                kind="template.warm",
                object_type="template",
                object_id=template,
                chain=("/",),
                requester=who,
                locks=[f"template:{hid}:{template}"],
                work=work,
            )
