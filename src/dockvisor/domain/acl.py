"""Who may do what where: ACL entries resolved along an object's path. Pure: no I/O.

Paths form a tree: `/`, `/hosts/H`, `/pools/P`, `/vms/V`, `/resource-sets/S`. A VM's
chain is `/`, its host, its pool (if any), itself; its snapshots inherit from it.
Walking the chain from the root, the entries at each level that apply (propagating ones,
or any entry at the object itself) replace what was inherited: a deeper path beats a
shallower one. At one level a user's own entries beat their groups' entries. The
NoAccess role at a level takes everything away. As in Proxmox VE (pveum), which users of
XO and Proxmox already know.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dockvisor.domain.privileges import Privilege

__all__ = ["AclEntry", "AclIndex", "SubjectKind", "vm_chain"]

_ABOVE_VMS = ("/hosts/", "/pools/")


class SubjectKind(enum.StrEnum):
    USER = "user"
    GROUP = "group"


@dataclass(frozen=True)
class AclEntry:
    subject_kind: SubjectKind
    subject_id: int
    path: str
    role: str
    propagate: bool = True


def vm_chain(vm_id: str, host_id: int, pool_id: int | None = None) -> tuple[str, ...]:
    """The paths a VM inherits from, root first."""
    chain = ["/", f"/hosts/{host_id}"]
    if pool_id is not None:
        chain.append(f"/pools/{pool_id}")
    chain.append(f"/vms/{vm_id}")
    return tuple(chain)


class AclIndex:
    """ACL entries indexed by path, with the roles' privileges: decides one check in a
    few microseconds."""

    def __init__(
        self, entries: Iterable[AclEntry], roles: Mapping[str, frozenset[Privilege]]
    ) -> None:
        self._roles = dict(roles)
        self._by_path: dict[str, list[AclEntry]] = defaultdict(list)
        self._by_subject: dict[tuple[SubjectKind, int], list[AclEntry]] = defaultdict(list)
        for entry in entries:
            self._by_path[entry.path].append(entry)
            self._by_subject[(entry.subject_kind, entry.subject_id)].append(entry)

    def privileges(
        self,
        user_id: int,
        group_ids: frozenset[int],
        chain: Sequence[str],
        memo: dict[tuple[str, ...], frozenset[Privilege]] | None = None,
    ) -> frozenset[Privilege]:
        """What the user holds on the last object of `chain`.

        `memo` (one per user) remembers what the user inherits at each chain prefix, so
        deciding for thousands of VMs under the same few hosts and pools stays cheap.
        """
        held: frozenset[Privilege] = frozenset()
        start = 0
        if memo is not None and len(chain) > 1:
            prefix = tuple(chain[:-1])
            inherited = memo.get(prefix)
            if inherited is None:
                inherited = self._walk(user_id, group_ids, prefix, final_at=None)
                memo[prefix] = inherited
            held, start = inherited, len(chain) - 1
        return self._walk(
            user_id, group_ids, chain, final_at=len(chain) - 1, start=start, held=held
        )

    def _walk(
        self,
        user_id: int,
        group_ids: frozenset[int],
        chain: Sequence[str],
        *,
        final_at: int | None,
        start: int = 0,
        held: frozenset[Privilege] = frozenset(),
    ) -> frozenset[Privilege]:
        """Resolve levels `start`.. of `chain` on top of `held` (inherited). At level
        `final_at` non-propagating entries apply too; None: only propagating ones (the
        chain is a prefix of a longer one)."""
        for depth in range(start, len(chain)):
            entries = self._by_path.get(chain[depth])
            if not entries:
                continue
            final = depth == final_at
            mine = [
                e
                for e in entries
                if e.subject_kind is SubjectKind.USER
                and e.subject_id == user_id
                and (e.propagate or final)
            ]
            if not mine:
                mine = [
                    e
                    for e in entries
                    if e.subject_kind is SubjectKind.GROUP
                    and e.subject_id in group_ids
                    and (e.propagate or final)
                ]
            if mine:
                held = self._union(e.role for e in mine)
        return held

    def _union(self, roles: Iterable[str]) -> frozenset[Privilege]:
        result: set[Privilege] = set()
        for role in roles:
            if role == "NoAccess":
                return frozenset()
            result |= self._roles.get(role, frozenset())
        return frozenset(result)

    def entries_of(self, user_id: int, group_ids: frozenset[int]) -> list[AclEntry]:
        """Every entry that names the user or one of their groups."""
        found = list(self._by_subject.get((SubjectKind.USER, user_id), ()))
        for group in group_ids:
            found += self._by_subject.get((SubjectKind.GROUP, group), ())
        return found

    def vm_candidates(self, user_id: int, group_ids: frozenset[int]) -> set[str] | None:
        """The ids of the only VMs the user could see, or None if an entry above VM level
        (root, a host, a pool) could let them see any VM."""
        ids: set[str] = set()
        for entry in self.entries_of(user_id, group_ids):
            if entry.path.startswith("/vms/"):
                ids.add(entry.path.removeprefix("/vms/"))
            elif entry.propagate and (entry.path == "/" or entry.path.startswith(_ABOVE_VMS)):
                return None
        return ids
