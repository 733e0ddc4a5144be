"""Who may do what where: ACL entries resolved along an object's path. Pure: no I/O.

Paths form a tree: `/`, `/hosts/H`, `/pools/P`, `/vms/V`, `/resource-sets/S`. A VM's
chain is `/`, its host, its pool (if any), itself; its snapshots inherit from it.
Walking the chain from the root, the entries at each level that apply (propagating ones,
or any entry at the object itself) replace what was inherited: a deeper path beats a
shallower one. At one level a user's own entries beat their groups' entries. The
NoAccess role at a level takes everything away. As in Proxmox VE (pveum), which users of
XO and Proxmox already know.

Changing the ACL is delegation, and delegation never escalates (`Delegation`):
- A change on a path needs Permissions.Modify there and confers at most what the
  granter holds there (Proxmox's "grant only a subset of what you hold").
- What one may delegate on a path is one's *authority* there: what one holds at every
  level of the path's chain where one holds Permissions.Modify. An entry placed deeper
  can narrow what a root admin *holds* on a VM, never their authority over it, so
  whoever has Permissions.Modify on a path can always list and revoke every entry at or
  below it.
- No change may narrow what a subject holds unless the granter *dominates* that
  subject on the path's chain: at each level, everything the subject holds the granter
  holds with authority. A VM's delegate cannot lock out the admins who delegated to
  them, nor the admins of the whole server.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dockvisor.domain.privileges import Privilege

__all__ = [
    "AclEntry",
    "AclIndex",
    "Delegation",
    "Subject",
    "SubjectKind",
    "normalize_path",
    "vm_chain",
]

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


def normalize_path(path: str) -> str:
    """An ACL path in its one spelling: `/vms/ID/` and `//vms//ID` are `/vms/ID`.

    Entries are matched by exact path, so an entry stored under another spelling of a
    path would apply to nothing while looking as if it applied."""
    parts = [p for p in path.strip().split("/") if p]
    return "/" + "/".join(parts)


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
            if mine := self._applying(user_id, group_ids, chain[depth], depth == final_at):
                held = self._union(e.role for e in mine)
        return held

    def _applying(
        self, user_id: int, group_ids: frozenset[int], path: str, final: bool
    ) -> list[AclEntry]:
        """The entries at `path` that apply to the user: their own, else their groups'
        (at the object itself, non-propagating ones too)."""
        entries = self._by_path.get(path)
        if not entries:
            return []
        mine = [
            e
            for e in entries
            if e.subject_kind is SubjectKind.USER
            and e.subject_id == user_id
            and (e.propagate or final)
        ]
        return mine or [
            e
            for e in entries
            if e.subject_kind is SubjectKind.GROUP
            and e.subject_id in group_ids
            and (e.propagate or final)
        ]

    def deciding(
        self, user_id: int, group_ids: frozenset[int], chain: Sequence[str]
    ) -> list[AclEntry]:
        """The entries that decide what the user holds on the last object of `chain`:
        those at the deepest level of the chain that has entries for them (what
        `privileges` unions). Empty: nothing applies, they hold nothing there."""
        found: list[AclEntry] = []
        for depth, path in enumerate(chain):
            if mine := self._applying(user_id, group_ids, path, depth == len(chain) - 1):
                found = mine
        return found

    def propagated(
        self, user_id: int, group_ids: frozenset[int], chain: Sequence[str]
    ) -> frozenset[Privilege]:
        """What the user holds on the objects below the last of `chain` (what it passes
        down: its non-propagating entries left out)."""
        return self._walk(user_id, group_ids, chain, final_at=None)

    def changed(self, *, add: Iterable[AclEntry] = (), remove: Iterable[AclEntry] = ()) -> AclIndex:
        """The index as it would be with `add` added and `remove` taken away."""
        gone = set(remove)
        kept = [e for entries in self._by_path.values() for e in entries if e not in gone]
        return AclIndex([*kept, *add], self._roles)

    def group_entries(self, group_id: int) -> list[AclEntry]:
        return list(self._by_subject.get((SubjectKind.GROUP, group_id), ()))

    def role(self, name: str) -> frozenset[Privilege] | None:
        return self._roles.get(name)

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


@dataclass(frozen=True)
class Subject:
    """Someone whose privileges a change may alter: a user with their groups (or a
    group on its own, as user id 0, which no user has)."""

    label: str
    user_id: int
    group_ids: frozenset[int]


class Delegation:
    """The rules of changing the ACL, for one granter, over one index. Pure: the
    caller supplies the index before the change and the index after it."""

    def __init__(self, index: AclIndex, user_id: int, group_ids: frozenset[int]) -> None:
        self._index = index
        self._user = user_id
        self._groups = group_ids

    def authority(self, chain: Sequence[str]) -> frozenset[Privilege]:
        """What the granter may delegate on the last object of `chain`: the union of
        what they hold at each level where they hold Permissions.Modify."""
        result: set[Privilege] = set()
        for depth in range(1, len(chain) + 1):
            held = self._index.privileges(self._user, self._groups, chain[:depth])
            if Privilege.PERMISSIONS_MODIFY in held:
                result |= held
        return frozenset(result)

    def dominates(self, subject: Subject, chain: Sequence[str]) -> bool:
        """True if at every level of `chain` the granter has authority over everything
        `subject` holds there."""
        for depth in range(1, len(chain) + 1):
            prefix = chain[:depth]
            held = self._index.privileges(subject.user_id, subject.group_ids, prefix)
            if not held <= self.authority(prefix):
                return False
        return True

    def refusal(
        self,
        chain: Sequence[str],
        role: str,
        after: AclIndex,
        affected: Iterable[tuple[Subject, Subject]],
    ) -> str | None:
        """Why the granter may not make a change that puts (or takes away) `role` on
        the last path of `chain`, or None if they may. The change leaves the ACL as
        `after`, and each of `affected` as the second of its pair (a group membership
        change alters a user's groups, not the entries)."""
        path = chain[-1]
        authority = self.authority(chain)
        if Privilege.PERMISSIONS_MODIFY not in authority:
            return f"lacks Permissions.Modify on {path}"
        privileges = self._index.role(role)
        if privileges is None:
            return f"cannot use the unknown role {role!r}"
        if missing := privileges - authority:
            names = ", ".join(sorted(p.value for p in missing))
            return f"cannot delegate {role} on {path}: it includes {names}, not held there"
        for was, becomes in affected:
            for view in (AclIndex.privileges, AclIndex.propagated):
                before = view(self._index, was.user_id, was.group_ids, chain)
                now = view(after, becomes.user_id, becomes.group_ids, chain)
                if not before <= now and not self.dominates(was, chain):
                    return (
                        f"cannot narrow what {was.label} holds on {path}: {was.label} "
                        "holds privileges there or above that the granter does not hold "
                        "with Permissions.Modify"
                    )
        return None
