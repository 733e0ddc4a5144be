"""Access decisions and the rules for changing them.

`AccessPolicy` keeps the ACL, the roles and the group memberships in memory, indexed,
so a check costs microseconds; it reloads them when this process changes them and at
most `ttl` seconds after another process did.

Delegation never escalates: granting a role on a path needs Permissions.Modify there and
every privilege of the role held there (as Proxmox's "grant only a subset").
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dockvisor.domain.acl import AclEntry, AclIndex, SubjectKind
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

    def require(self, who: Principal, privilege: Privilege, chain: tuple[str, ...]) -> None:
        """Forbidden, naming the privilege and the path, unless `who` holds it there."""
        if not self.allows(who, privilege, chain):
            raise Forbidden(f"{who.name} lacks {privilege} on {chain[-1]}")

    def vm_candidates(self, who: Principal) -> set[str] | None:
        """The only VM ids `who` could see, or None if they might see any."""
        return self._fresh().vm_candidates(who.user_id, who.group_ids)

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

    def _check_delegation(
        self, who: Principal, path: str, role: str, chain: tuple[str, ...]
    ) -> None:
        held = self.privileges(who, chain)
        if Privilege.PERMISSIONS_MODIFY not in held:
            raise Forbidden(f"{who.name} lacks Permissions.Modify on {path}")
        missing = self.role_privileges(role) - held
        if missing:
            names = ", ".join(sorted(p.value for p in missing))
            raise Forbidden(
                f"{who.name} cannot grant {role} on {path}: it includes {names}, "
                f"which {who.name} does not hold there"
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
        self._check_delegation(who, path, role, chain)
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
        self._check_delegation(who, row.path, row.role, chain)
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


def group_members(session: Session, group_id: int) -> list[str]:
    query = (
        select(UserRow.name)
        .join(GroupMember, GroupMember.user_id == UserRow.id)
        .where(GroupMember.group_id == group_id)
    )
    return sorted(session.scalars(query))
