"""Access decisions and the rules for changing them.

`AccessPolicy` keeps the ACL, the roles and the group memberships in memory, indexed,
so a check costs microseconds; it reloads them when this process changes them and at
most `ttl` seconds after another process did.

Delegation never escalates (the rules are `domain.acl.Delegation`): every change of
who holds what (an ACL entry, a group membership, a resource set's subjects, deleting a
user or a group) needs Permissions.Modify on each path it affects, confers only what the
granter holds there, and never narrows a subject the granter does not dominate.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dockvisor.domain.acl import AclEntry, AclIndex, Delegation, Subject, SubjectKind
from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege, parse_privileges
from dockvisor.errors import AlreadyExists, Forbidden, InvalidInput, NotFound
from dockvisor.services.identity import Principal, group_by_name, user_by_name
from dockvisor.store.db import Database
from dockvisor.store.models import (
    AclEntryRow,
    GroupMember,
    GroupRow,
    ResourceSetSubject,
    RoleRow,
    UserRow,
)

__all__ = ["ROOT", "AccessPolicy", "ensure_builtin_roles"]

ROOT = ("/",)


def ensure_builtin_roles(session: Session) -> None:
    """Write the built-in roles (again, if their privileges changed in this version)."""
    existing = {r.name: r for r in session.scalars(select(RoleRow))}
    for role in BUILTIN_ROLES.values():
        privileges = sorted(p.value for p in role.privileges)
        row = existing.get(role.name)
        if row is None:
            session.add(
                RoleRow(
                    name=role.name,
                    privileges=privileges,
                    builtin=True,
                    description=role.description,
                )
            )
        elif row.privileges != privileges or not row.builtin:
            row.privileges, row.builtin, row.description = privileges, True, role.description


class AccessPolicy:
    def __init__(self, db: Database, *, ttl: float = 1.0) -> None:
        self._db = db
        self._ttl = ttl
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._index = AclIndex((), {})
        self._roles: dict[str, frozenset[Privilege]] = {}
        self._set_subjects: dict[tuple[str, int], set[int]] = {}
        # Also forgotten on invalidate(): caches of who someone is (RecentTokens).
        self.on_invalidate: list[Callable[[], None]] = []

    # -- cache ---------------------------------------------------------------------------

    @property
    def ttl(self) -> float:
        """Seconds a change made by another server process may take to apply here."""
        return self._ttl

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = -1e9
        for forget in self.on_invalidate:
            forget()

    def _fresh(self) -> AclIndex:
        if time.monotonic() - self._loaded_at <= self._ttl:
            return self._index  # the common case: no lock
        with self._lock:
            if time.monotonic() - self._loaded_at > self._ttl:
                with self._db.read() as session:
                    roles = {
                        r.name: parse_privileges(r.privileges)
                        for r in session.scalars(select(RoleRow))
                    }
                    entries = [
                        AclEntry(
                            SubjectKind(r.subject_kind), r.subject_id, r.path, r.role, r.propagate
                        )
                        for r in session.scalars(select(AclEntryRow))
                    ]
                    subjects: dict[tuple[str, int], set[int]] = defaultdict(set)
                    for row in session.scalars(select(ResourceSetSubject)):
                        subjects[(row.subject_kind, row.subject_id)].add(row.set_id)
                self._roles = roles
                self._index = AclIndex(entries, roles)
                self._set_subjects = dict(subjects)
                self._loaded_at = time.monotonic()
            return self._index

    # -- decisions -----------------------------------------------------------------------

    def privileges(self, who: Principal, chain: tuple[str, ...]) -> frozenset[Privilege]:
        return self._fresh().privileges(who.user_id, who.group_ids, chain)

    def allows(self, who: Principal, privilege: Privilege, chain: tuple[str, ...]) -> bool:
        return privilege in self.privileges(who, chain)

    def allowed_many(
        self, who: Principal, privilege: Privilege, chains: list[tuple[str, ...]]
    ) -> list[bool]:
        """`allows` for many objects at once (one index, shared inherited prefixes)."""
        index = self._fresh()
        memo: dict[tuple[str, ...], frozenset[Privilege]] = {}
        return [
            privilege in index.privileges(who.user_id, who.group_ids, chain, memo)
            for chain in chains
        ]

    def deciding(self, who: Principal, chain: tuple[str, ...]) -> list[AclEntry]:
        """The ACL entries that give `who` what they hold on the object (see AclIndex)."""
        return self._fresh().deciding(who.user_id, who.group_ids, chain)

    def require(self, who: Principal, privilege: Privilege, chain: tuple[str, ...]) -> None:
        """Forbidden, naming the privilege and the path, unless `who` holds it there."""
        if not self.allows(who, privilege, chain):
            raise Forbidden(f"{who.name} lacks {privilege} on {chain[-1]}")

    def vm_candidates(self, who: Principal) -> set[str] | None:
        """The only VM ids `who` could see, or None if they might see any."""
        return self._fresh().vm_candidates(who.user_id, who.group_ids)

    def entry_paths(self, who: Principal) -> set[str]:
        """The paths of every entry naming `who` or one of their groups."""
        return {e.path for e in self._fresh().entries_of(who.user_id, who.group_ids)}

    def resource_sets_of(self, who: Principal) -> set[int]:
        """Sets `who` is a subject of, directly or through a group."""
        self._fresh()
        sets = set(self._set_subjects.get(("user", who.user_id), ()))
        for group in who.group_ids:
            sets |= self._set_subjects.get(("group", group), set())
        return sets

    def may_allocate_in(self, who: Principal, set_id: int) -> bool:
        """Subjects of a set may create VMs in it; so may holders of VM.Allocate on it."""
        if set_id in self.resource_sets_of(who):
            return True
        return self.allows(who, Privilege.VM_ALLOCATE, ("/", f"/resource-sets/{set_id}"))

    def role_privileges(self, role: str) -> frozenset[Privilege]:
        self._fresh()
        if role not in self._roles:
            raise NotFound(f"no role named {role!r}")
        return self._roles[role]

    # -- changing the ACL ----------------------------------------------------------------

    def delegation(self, who: Principal) -> Delegation:
        return Delegation(self._fresh(), who.user_id, who.group_ids)

    def authority(self, who: Principal, chain: tuple[str, ...]) -> frozenset[Privilege]:
        """What `who` may delegate on the last object of `chain` (see Delegation)."""
        return self.delegation(who).authority(chain)

    def may_administer(self, who: Principal, chain: tuple[str, ...]) -> bool:
        """True if `who` holds Permissions.Modify at some level of `chain`: they may see
        and revoke the entries there, whether or not they can see the object."""
        return Privilege.PERMISSIONS_MODIFY in self.authority(who, chain)

    def check_change(
        self,
        who: Principal,
        chain: tuple[str, ...],
        role: str,
        affected: Iterable[tuple[Subject, Subject]],
        *,
        add: Iterable[AclEntry] = (),
        remove: Iterable[AclEntry] = (),
    ) -> None:
        """Forbidden unless `who` may make a change that puts or takes `role` on the
        last path of `chain` (see Delegation.refusal)."""
        index = self._fresh()
        after = index.changed(add=add, remove=remove) if (add or remove) else index
        reason = Delegation(index, who.user_id, who.group_ids).refusal(chain, role, after, affected)
        if reason is not None:
            raise Forbidden(f"{who.name} {reason}")

    def subjects(self, session: Session, kind: str, subject_id: int) -> list[Subject]:
        """Everyone whose privileges an entry for this subject decides: the user (with
        their groups), or the group itself and each of its members."""
        if kind == "user":
            name = subject_name(session, "user", subject_id)
            return [Subject(name, subject_id, _groups_of(session, subject_id))]
        found = [Subject(subject_name(session, "group", subject_id), 0, frozenset({subject_id}))]
        members = session.scalars(
            select(GroupMember.user_id).where(GroupMember.group_id == subject_id)
        )
        for user_id in members:
            found.append(
                Subject(
                    subject_name(session, "user", user_id), user_id, _groups_of(session, user_id)
                )
            )
        return found

    def check_entry_change(
        self,
        session: Session,
        who: Principal,
        entry: AclEntry,
        chain: tuple[str, ...],
        *,
        adding: bool,
    ) -> None:
        """Forbidden unless `who` may add (or remove) this one entry."""
        same = [(s, s) for s in self.subjects(session, entry.subject_kind, entry.subject_id)]
        if adding:
            self.check_change(who, chain, entry.role, same, add=[entry])
        else:
            self.check_change(who, chain, entry.role, same, remove=[entry])

    def check_membership(
        self,
        session: Session,
        who: Principal,
        user_id: int,
        group_id: int,
        chains: Callable[[str], tuple[str, ...]],
        *,
        joining: bool,
    ) -> None:
        """Forbidden unless `who` may put the user into the group (or take them out):
        that confers (or takes away) every entry of the group, so it is checked as the
        grant (or revocation) of each of them. `chains` gives an entry path's chain."""
        name = subject_name(session, "user", user_id)
        groups = _groups_of(session, user_id)
        before = Subject(name, user_id, groups)
        after = Subject(name, user_id, groups | {group_id} if joining else groups - {group_id})
        for entry in self._fresh().group_entries(group_id):
            self.check_change(who, chains(entry.path), entry.role, [(before, after)])

    def check_removal(
        self,
        session: Session,
        who: Principal,
        user_id: int,
        chains: Callable[[str], tuple[str, ...]],
    ) -> None:
        """Forbidden unless `who` dominates the user on every path where the user holds
        something (their entries and their groups'): deleting a user takes it all away."""
        groups = _groups_of(session, user_id)
        subject = Subject(subject_name(session, "user", user_id), user_id, groups)
        index = self._fresh()
        delegation = Delegation(index, who.user_id, who.group_ids)
        for entry in index.entries_of(user_id, groups):
            chain = chains(entry.path)
            if not delegation.dominates(subject, chain):
                raise Forbidden(
                    f"{who.name} cannot delete {subject.label}: they hold privileges on "
                    f"{entry.path} (or above it) that {who.name} does not hold with "
                    "Permissions.Modify"
                )

    def check_set_subjects(
        self,
        session: Session,
        who: Principal,
        chain: tuple[str, ...],
        added: Iterable[tuple[str, int]],
        removed: Iterable[tuple[str, int]],
    ) -> None:
        """Forbidden unless `who` may make these subjects of a resource set (or stop
        them being ones). Being a subject is a grant: it lets one create VMs in the set
        (VM.Allocate there) and gives Developer on each VM one creates, so the granter
        needs Permissions.Modify on the set and all of that with it; taking it away
        also needs dominance over the subject."""
        added, removed = list(added), list(removed)
        if not added and not removed:
            return
        authority = self.authority(who, chain)
        confers = {Privilege.PERMISSIONS_MODIFY, Privilege.VM_ALLOCATE}
        confers |= BUILTIN_ROLES["Developer"].privileges
        if missing := confers - authority:
            names = ", ".join(sorted(p.value for p in missing))
            raise Forbidden(
                f"{who.name} cannot change the subjects of {chain[-1]}: that takes {names} "
                "there, which they do not hold"
            )
        delegation = Delegation(self._fresh(), who.user_id, who.group_ids)
        for kind, subject_id in removed:
            for subject in self.subjects(session, kind, subject_id):
                if not delegation.dominates(subject, chain):
                    raise Forbidden(
                        f"{who.name} cannot remove {subject.label} from {chain[-1]}: "
                        f"{subject.label} holds privileges there that {who.name} does not"
                    )

    def grant(
        self,
        session: Session,
        who: Principal,
        *,
        subject: str,
        path: str,
        role: str,
        propagate: bool,
        chain: tuple[str, ...],
    ) -> AclEntryRow:
        """Add an ACL entry. `chain` is the path's inheritance chain (it ends in `path`)."""
        kind, subject_id = resolve_subject(session, subject)
        self.role_privileges(role)  # NotFound for a role that does not exist
        entry = AclEntry(SubjectKind(kind), subject_id, path, role, propagate)
        self.check_entry_change(session, who, entry, chain, adding=True)
        exists = session.scalar(
            select(AclEntryRow).where(
                AclEntryRow.subject_kind == kind,
                AclEntryRow.subject_id == subject_id,
                AclEntryRow.path == path,
                AclEntryRow.role == role,
            )
        )
        if exists is not None:
            raise AlreadyExists(f"{subject} already has {role} on {path}")
        row = AclEntryRow(
            subject_kind=kind, subject_id=subject_id, path=path, role=role, propagate=propagate
        )
        session.add(row)
        session.flush()
        self.invalidate()
        return row

    def revoke(
        self, session: Session, who: Principal, row: AclEntryRow, chain: tuple[str, ...]
    ) -> None:
        entry = AclEntry(
            SubjectKind(row.subject_kind), row.subject_id, row.path, row.role, row.propagate
        )
        self.check_entry_change(session, who, entry, chain, adding=False)
        session.delete(row)
        self.invalidate()

    def create_role(
        self,
        session: Session,
        who: Principal,
        name: str,
        privileges: Iterable[str],
        description: str = "",
    ) -> RoleRow:
        try:
            privs = parse_privileges(list(privileges))
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        if not name or len(name) > 64 or not name.replace(".", "").replace("-", "").isalnum():
            raise InvalidInput(f"role name {name!r} is not valid (letters, digits, '.', '-')")
        held = self.privileges(who, ROOT)
        if Privilege.PERMISSIONS_MODIFY not in held:
            raise Forbidden(f"{who.name} lacks Permissions.Modify on /")
        if missing := privs - held:
            raise Forbidden(
                f"{who.name} cannot make a role with {', '.join(sorted(missing))}, "
                "which they do not hold"
            )
        if session.scalar(select(RoleRow).where(RoleRow.name == name)) is not None:
            raise AlreadyExists(f"a role named {name!r} already exists")
        row = RoleRow(
            name=name,
            privileges=sorted(p.value for p in privs),
            builtin=False,
            description=description,
        )
        session.add(row)
        session.flush()
        self.invalidate()
        return row

    def delete_role(self, session: Session, who: Principal, name: str) -> None:
        self.require(who, Privilege.PERMISSIONS_MODIFY, ROOT)
        row = session.scalar(select(RoleRow).where(RoleRow.name == name))
        if row is None:
            raise NotFound(f"no role named {name!r}")
        if row.builtin:
            raise InvalidInput(f"{name} is a built-in role; it cannot be deleted")
        session.execute(delete(AclEntryRow).where(AclEntryRow.role == name))
        session.delete(row)
        self.invalidate()


def resolve_subject(session: Session, subject: str) -> tuple[str, int]:
    """`user:NAME` or `group:NAME` -> ("user"|"group", id)."""
    kind, _, name = subject.partition(":")
    if kind == "user":
        return "user", user_by_name(session, name).id
    if kind == "group":
        return "group", group_by_name(session, name).id
    raise InvalidInput(f"subject {subject!r} must be user:NAME or group:NAME")


def subject_name(session: Session, kind: str, subject_id: int) -> str:
    model = UserRow if kind == "user" else GroupRow
    name = session.scalar(select(model.name).where(model.id == subject_id))
    return f"{kind}:{name}" if name is not None else f"{kind}:#{subject_id}"


def _groups_of(session: Session, user_id: int) -> frozenset[int]:
    return frozenset(
        session.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user_id))
    )


def group_members(session: Session, group_id: int) -> list[str]:
    query = (
        select(UserRow.name)
        .join(GroupMember, GroupMember.user_id == UserRow.id)
        .where(GroupMember.group_id == group_id)
    )
    return sorted(session.scalars(query))
