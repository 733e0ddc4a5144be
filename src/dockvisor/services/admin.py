"""Administration use cases of the server: users, groups, tokens, roles, the ACL, hosts,
pools, resource sets, templates and the audit log. Each checks the caller's privilege
and writes the audit log.

Managing users, groups, hosts, pools, templates and resource sets takes Sys.Modify on
`/`; reading the audit log takes Sys.Audit on `/`; the ACL and roles follow the
delegation rule of AccessPolicy. Everyone manages their own API tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from dockvisor.domain.acl import AclEntry, SubjectKind, normalize_path
from dockvisor.domain.effective_access import judge_entries, privilege_origins
from dockvisor.domain.model import Template, TemplateSpec
from dockvisor.domain.naming import validate_template_name
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.quota import Limits
from dockvisor.drivers.registry import HostCredentials, family_of
from dockvisor.errors import (
    AlreadyExists,
    Forbidden,
    HypervisorUnreachable,
    InvalidInput,
    NotFound,
)
from dockvisor.services import identity, quotas
from dockvisor.services.access import ROOT, group_members, resolve_subject, subject_name
from dockvisor.services.audit import ChainReport
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import ReconcileReport, chain_of, chain_of_path
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import (
    AclEntryRow,
    AuditRow,
    GroupMember,
    GroupRow,
    HostRow,
    PoolRow,
    ResourceSetRow,
    ResourceSetSubject,
    RoleRow,
    TokenRow,
    UserRow,
    VmRow,
)

__all__ = ["AccessExplanation", "Administration"]

P = Privilege


@dataclass(frozen=True)
class AclView:
    id: int
    subject: str
    path: str
    role: str
    propagate: bool


@dataclass(frozen=True)
class ExplainedEntry:
    """An ACL entry on a VM's chain that names the user or one of their groups."""

    subject: str
    role: str
    path: str
    propagate: bool
    decides: bool
    why: str


@dataclass(frozen=True)
class AccessExplanation:
    """What a user holds on a VM and where each privilege comes from."""

    user: str
    vm_id: str
    vm_name: str
    chain: tuple[str, ...]
    held: list[str]
    entries: list[ExplainedEntry]  # root first; the deciding ones have `decides`
    origins: dict[str, list[str]]  # privilege -> "ROLE for SUBJECT on PATH"


class Administration:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.db = cp.db
        self.access = cp.access

    def _require_root(self, who: Principal, privilege: Privilege) -> None:
        self.access.require(who, privilege, ROOT)

    # -- users and groups --------------------------------------------------------------

    def list_users(self, who: Principal) -> list[dict[str, Any]]:
        """Everyone for those who manage users or permissions; oneself for the others."""
        held = self.access.privileges(who, ROOT)
        everyone = bool({P.SYS_MODIFY, P.PERMISSIONS_MODIFY} & held)
        with self.db.read() as session:
            query = select(UserRow).order_by(UserRow.name)
            if not everyone:
                query = query.where(UserRow.id == who.user_id)
            return [
                {"id": u.id, "name": u.name, "disabled": u.disabled} for u in session.scalars(query)
            ]

    def create_user(
        self, who: Principal, name: str, password: str, admin: bool = False
    ) -> dict[str, Any]:
        with self.cp.ops.audited(who, "user.create", f"user:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                user = identity.create_user(session, name, password)
                if admin:  # a grant of Admin on /, under the rules of any grant
                    self.access.grant(
                        session,
                        who,
                        subject=f"user:{name}",
                        path="/",
                        role="Admin",
                        propagate=True,
                        chain=ROOT,
                    )
                result = {"id": user.id, "name": user.name, "disabled": False}
            self.access.invalidate()
        return result

    def delete_user(self, who: Principal, name: str) -> None:
        with self.cp.ops.audited(who, "user.delete", f"user:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                user = identity.user_by_name(session, name)
                if user.id == who.user_id:
                    raise InvalidInput("you cannot delete yourself")
                self.access.check_removal(session, who, user.id, self.acl_chain)
                session.execute(
                    delete(AclEntryRow).where(
                        AclEntryRow.subject_kind == "user", AclEntryRow.subject_id == user.id
                    )
                )
                session.execute(
                    delete(ResourceSetSubject).where(
                        ResourceSetSubject.subject_kind == "user",
                        ResourceSetSubject.subject_id == user.id,
                    )
                )
                session.delete(user)
            self.access.invalidate()

    def list_groups(self, who: Principal) -> list[dict[str, Any]]:
        held = self.access.privileges(who, ROOT)
        everyone = bool({P.SYS_MODIFY, P.PERMISSIONS_MODIFY} & held)
        with self.db.read() as session:
            groups = session.scalars(select(GroupRow).order_by(GroupRow.name))
            return [
                {"id": g.id, "name": g.name, "members": group_members(session, g.id)}
                for g in groups
                if everyone or g.id in who.group_ids
            ]

    def create_group(self, who: Principal, name: str, members: list[str]) -> dict[str, Any]:
        with self.cp.ops.audited(who, "group.create", f"group:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                group = identity.create_group(session, name)
                self._set_members(session, who, group, members)
                result = {"id": group.id, "name": name, "members": sorted(set(members))}
            self.access.invalidate()
        return result

    def set_group_members(self, who: Principal, name: str, members: list[str]) -> dict[str, Any]:
        """Group membership is a grant: joining confers every entry of the group and
        leaving takes it away, so each is checked as that grant or revocation."""
        with self.cp.ops.audited(who, "group.members", f"group:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                group = identity.group_by_name(session, name)
                self._set_members(session, who, group, members)
                result = {"id": group.id, "name": name, "members": sorted(set(members))}
            self.access.invalidate()
        return result

    def _set_members(
        self, session: Any, who: Principal, group: GroupRow, members: list[str]
    ) -> None:
        wanted = {identity.user_by_name(session, m).id for m in set(members)}
        current = set(
            session.scalars(select(GroupMember.user_id).where(GroupMember.group_id == group.id))
        )
        for user_id in sorted(wanted - current):
            self.access.check_membership(
                session, who, user_id, group.id, self.acl_chain, joining=True
            )
        for user_id in sorted(current - wanted):
            self.access.check_membership(
                session, who, user_id, group.id, self.acl_chain, joining=False
            )
        session.execute(delete(GroupMember).where(GroupMember.group_id == group.id))
        for user_id in sorted(wanted):
            session.add(GroupMember(group_id=group.id, user_id=user_id))

    def delete_group(self, who: Principal, name: str) -> None:
        with self.cp.ops.audited(who, "group.delete", f"group:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                group = identity.group_by_name(session, name)
                self._set_members(session, who, group, [])  # every member leaves first
                session.execute(
                    delete(AclEntryRow).where(
                        AclEntryRow.subject_kind == "group", AclEntryRow.subject_id == group.id
                    )
                )
                session.execute(
                    delete(ResourceSetSubject).where(
                        ResourceSetSubject.subject_kind == "group",
                        ResourceSetSubject.subject_id == group.id,
                    )
                )
                session.delete(group)
            self.access.invalidate()

    # -- tokens ------------------------------------------------------------------------

    def list_tokens(self, who: Principal) -> list[identity.TokenInfo]:
        with self.db.read() as session:
            rows = session.scalars(
                select(TokenRow).where(TokenRow.user_id == who.user_id).order_by(TokenRow.id)
            )
            return [identity.token_info(r, who.name) for r in rows]

    def create_token(
        self, who: Principal, name: str, expires: datetime | None
    ) -> tuple[identity.TokenInfo, str]:
        with self.cp.ops.audited(who, "token.create", f"token:{who.name}/{name}"):
            with self.db.session() as session:
                user = session.get(UserRow, who.user_id)
                assert user is not None
                row, secret = identity.create_token(session, user, name, expires)
                info = identity.token_info(row, who.name)
        return info, secret

    def revoke_token(self, who: Principal, token_id: int) -> None:
        with self.cp.ops.audited(who, "token.revoke", f"token:{token_id}"):
            with self.db.session() as session:
                row = session.get(TokenRow, token_id)
                if row is None or row.user_id != who.user_id:
                    raise NotFound(f"no token {token_id}")
                row.revoked = True
            self.cp.recent_tokens.clear()

    # -- roles and the ACL -------------------------------------------------------------

    def list_roles(self) -> list[dict[str, Any]]:
        with self.db.read() as session:
            return [
                {
                    "name": r.name,
                    "privileges": sorted(r.privileges),
                    "builtin": r.builtin,
                    "description": r.description,
                }
                for r in session.scalars(select(RoleRow).order_by(RoleRow.name))
            ]

    def create_role(
        self, who: Principal, name: str, privileges: list[str], description: str = ""
    ) -> dict[str, Any]:
        with self.cp.ops.audited(who, "role.create", f"role:{name}"), self.db.session() as s:
            row = self.access.create_role(s, who, name, privileges, description)
            return {
                "name": row.name,
                "privileges": row.privileges,
                "builtin": False,
                "description": row.description,
            }

    def delete_role(self, who: Principal, name: str) -> None:
        with self.cp.ops.audited(who, "role.delete", f"role:{name}"), self.db.session() as s:
            self.access.delete_role(s, who, name)

    def acl_chain(self, path: str) -> tuple[str, ...]:
        """The inheritance chain of an ACL path, whoever asks; NotFound if the object it
        names does not exist."""
        with self.db.read() as session:
            return chain_of_path(session, path)

    def _administered_chain(self, who: Principal, path: str) -> tuple[str, ...]:
        """The chain of an ACL path on which `who` may change permissions. An object
        they can neither view nor administer does not exist for them (NotFound)."""
        chain = self.acl_chain(path)
        if self.access.may_administer(who, chain):
            return chain
        if chain[-1].startswith("/vms/") and not self.access.allows(who, P.VM_VIEW, chain):
            raise NotFound(f"no VM {chain[-1].removeprefix('/vms/')}")
        raise Forbidden(f"{who.name} lacks Permissions.Modify on {chain[-1]}")

    def list_acl(self, who: Principal) -> list[AclView]:
        """Every entry at or below a path where `who` holds Permissions.Modify, whether
        or not they can see the object (so no delegate can hide an entry from them)."""
        with self.db.read() as session:
            rows = list(session.scalars(select(AclEntryRow).order_by(AclEntryRow.id)))
            views = []
            for row in rows:
                try:
                    chain = self.acl_chain(row.path)
                except (NotFound, InvalidInput):
                    continue
                if self.access.may_administer(who, chain):
                    views.append(
                        AclView(
                            row.id,
                            subject_name(session, row.subject_kind, row.subject_id),
                            row.path,
                            row.role,
                            row.propagate,
                        )
                    )
        return views

    def grant(self, who: Principal, subject: str, path: str, role: str, propagate: bool) -> AclView:
        path = normalize_path(path)
        with self.cp.ops.audited(who, "acl.grant", f"acl:{subject}@{path}={role}"):
            chain = self._administered_chain(who, path)
            with self.db.session() as session:
                row = self.access.grant(
                    session,
                    who,
                    subject=subject,
                    path=path,
                    role=role,
                    propagate=propagate,
                    chain=chain,
                )
                return AclView(row.id, subject, path, role, propagate)

    def revoke(self, who: Principal, entry_id: int) -> None:
        with self.cp.ops.audited(who, "acl.revoke", f"acl:{entry_id}"):
            with self.db.session() as session:
                row = session.get(AclEntryRow, entry_id)
                if row is None:
                    raise NotFound(f"no ACL entry {entry_id}")
                try:
                    chain = self.acl_chain(row.path)
                except (NotFound, InvalidInput):
                    chain = ("/", row.path)  # an entry left on a path that is gone
                if not self.access.may_administer(who, chain):
                    raise NotFound(f"no ACL entry {entry_id}")
                self.access.revoke(session, who, row, chain)

    def explain_access(self, who: Principal, user_name: str, vm_id: str) -> AccessExplanation:
        """What `user_name` holds on the VM, with the ACL entries that decide it and those
        that do not (and why). For those who hold Permissions.Modify (with authority) or
        Sys.Audit on the VM, and for anyone about themselves on a VM they view; a VM they
        cannot view does not exist for them."""
        with self.db.read() as session:
            row = session.get(VmRow, vm_id)
            if row is None:
                raise NotFound(f"no VM {vm_id}")
            chain = chain_of(row)
            mine = self.access.privileges(who, chain)
            own = user_name == who.name and P.VM_VIEW in mine  # one's own: seeing the VM
            if not (own or P.SYS_AUDIT in mine or self.access.may_administer(who, chain)):
                if P.VM_VIEW not in mine:
                    raise NotFound(f"no VM {vm_id}")
                raise Forbidden(f"{who.name} lacks Permissions.Modify or Sys.Audit on {chain[-1]}")
            user = identity.user_by_name(session, user_name)
            subject = identity.principal_for(session, user, "session")
            rows = session.scalars(
                select(AclEntryRow).where(AclEntryRow.path.in_(chain)).order_by(AclEntryRow.id)
            )
            names: dict[AclEntry, str] = {}
            for r in rows:
                kind = SubjectKind(r.subject_kind)
                if (kind is SubjectKind.USER and r.subject_id == user.id) or (
                    kind is SubjectKind.GROUP and r.subject_id in subject.group_ids
                ):
                    entry = AclEntry(kind, r.subject_id, r.path, r.role, r.propagate)
                    names[entry] = subject_name(session, r.subject_kind, r.subject_id)
            vm_name = row.name
        held = self.access.privileges(subject, chain)
        deciding = self.access.deciding(subject, chain)
        roles = {e.role: self.access.role_privileges(e.role) for e in deciding}
        judged = judge_entries(chain, list(names), deciding)
        return AccessExplanation(
            user=user_name,
            vm_id=vm_id,
            vm_name=vm_name,
            chain=chain,
            held=sorted(p.value for p in held),
            entries=[
                ExplainedEntry(
                    names[j.entry], j.entry.role, j.entry.path, j.entry.propagate, j.decides, j.why
                )
                for j in judged
            ],
            origins={
                p.value: [f"{e.role} for {names.get(e, '?')} on {e.path}" for e in entries]
                for p, entries in privilege_origins(held, deciding, roles).items()
            },
        )

    # -- hosts, pools, templates -------------------------------------------------------

    def list_hosts(self, who: Principal) -> list[dict[str, Any]]:
        with self.db.read() as session:
            hosts = list(session.scalars(select(HostRow).order_by(HostRow.id)))
        allowed_sets = self._sets_for(who)
        return [
            self._host_view(h.id, h.name, h.uri)
            for h in hosts
            if self.access.privileges(who, ("/", f"/hosts/{h.id}"))
            or any(h.id in s.host_ids for s in allowed_sets)
        ]

    def add_host(
        self,
        who: Principal,
        name: str,
        uri: str,
        *,
        user: str | None = None,
        password: str | None = None,
        certificate: str | None = None,
    ) -> dict[str, Any]:
        """Register a hypervisor host; a XAPI pool with its user and password (sealed in
        the store, never shown again) and, optionally, its certificate to trust."""
        with self.cp.ops.audited(who, "host.add", f"host:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            credentials = None
            if user is not None or password is not None:
                if not user or not password:
                    raise InvalidInput("give both the pool's user and its password")
                if certificate is not None and "BEGIN CERTIFICATE" not in certificate:
                    raise InvalidInput("the certificate must be PEM (-----BEGIN CERTIFICATE-----)")
                credentials = HostCredentials(user, password, certificate or None)
            elif certificate is not None:
                raise InvalidInput("a certificate goes with a pool's user and password")
            with self.db.session() as session:
                try:
                    row = self.cp.hosts.add(session, name, uri, credentials)
                except HypervisorUnreachable as exc:  # a host that cannot be reached
                    raise InvalidInput(str(exc)) from None  # is a bad request to add it
                host_id = row.id
        self.cp.inventory.reconcile(host_id)
        return self._host_view(host_id, name, uri)

    def _host_view(self, host_id: int, name: str, uri: str) -> dict[str, Any]:
        """A host as the API shows it: what it is, whether it answers, what it can do
        (never its credentials)."""
        health = self.cp.hosts.health(host_id)
        info = self.cp.hosts.info(host_id) if health.state != "unreachable" else None
        return {
            "id": host_id,
            "name": name,
            "uri": uri,
            "family": family_of(uri).name,
            "state": health.state,
            "state_since": health.since,
            "capabilities": info.capabilities.names() if info else None,
        }

    def list_pools(self, who: Principal) -> list[dict[str, Any]]:
        with self.db.read() as session:
            pools = list(session.scalars(select(PoolRow).order_by(PoolRow.id)))
        return [
            {"id": p.id, "name": p.name}
            for p in pools
            if self.access.privileges(who, ("/", f"/pools/{p.id}"))
        ]

    def create_pool(self, who: Principal, name: str) -> dict[str, Any]:
        with self.cp.ops.audited(who, "pool.create", f"pool:{name}"):
            self._require_root(who, P.SYS_MODIFY)
            validate_template_name(name)
            with self.db.session() as session:
                if session.scalar(select(PoolRow).where(PoolRow.name == name)) is not None:
                    raise AlreadyExists(f"a pool named {name!r} already exists")
                row = PoolRow(name=name)
                session.add(row)
                session.flush()
                return {"id": row.id, "name": row.name}

    def list_templates(
        self, who: Principal, host_id: int | None = None
    ) -> list[tuple[int, Template]]:
        """Admins see every template; others those their resource sets allow."""
        admin = self.access.allows(who, P.SYS_MODIFY, ROOT)
        allowed = {(h, t) for s in self._sets_for(who) for h in s.host_ids for t in s.templates}
        result = []
        for hid in self.cp.hosts.ids():
            if host_id is not None and hid != host_id:
                continue
            host_visible = admin or self.access.allows(who, P.VM_ALLOCATE, ("/", f"/hosts/{hid}"))
            if not host_visible and not any(h == hid for h, _ in allowed):
                continue
            for template in self.cp.hosts.driver(hid).list_templates():
                if host_visible or (hid, template.name) in allowed:
                    result.append((hid, template))
        return result

    def add_template(self, who: Principal, host_id: int, spec: TemplateSpec) -> Template:
        """Register a template from image files an administrator of the machine put in
        the server's template directory (`<data dir>/template-images`). Only there:
        a path is the server's to open, and Sys.Modify may not read any file of the host
        into a VM's disk (nor learn which files exist)."""
        with self.cp.ops.audited(who, "template.add", f"template:{spec.name}"):
            self._require_root(who, P.SYS_MODIFY)
            from dockvisor.services.templates import add_template

            allowed = self.cp.settings.template_images
            for label, path in (("disk", spec.disk), ("kernel", spec.kernel),
                                ("initrd", spec.initrd)):  # fmt: skip
                if path is not None and Path(path).resolve().parent != allowed.resolve():
                    raise InvalidInput(
                        f"the template's {label} must be a file directly in {allowed} "
                        "(put it there on the server first)"
                    )
            return add_template(
                self.cp.hosts.driver(host_id),
                name=spec.name,
                disk=spec.disk,
                kernel=spec.kernel,
                initrd=spec.initrd,
                cmdline=spec.cmdline,
                docker_port=spec.docker_port,
                description=spec.description,
            )

    # -- resource sets -----------------------------------------------------------------

    def _sets_for(self, who: Principal) -> list[ResourceSetRow]:
        with self.db.read() as session:
            rows = list(session.scalars(select(ResourceSetRow).order_by(ResourceSetRow.id)))
        if self.access.allows(who, P.SYS_MODIFY, ROOT):
            return rows
        return [r for r in rows if self.access.may_allocate_in(who, r.id)]

    def list_resource_sets(self, who: Principal) -> list[quotas.ResourceSetView]:
        ids = {r.id for r in self._sets_for(who)}
        with self.db.read() as session:
            rows = session.scalars(
                select(ResourceSetRow).where(ResourceSetRow.id.in_(ids)).order_by(ResourceSetRow.id)
            )
            return [quotas.set_view(session, r, self._subjects(session, r.id)) for r in rows]

    def get_resource_set(self, who: Principal, set_id: int) -> quotas.ResourceSetView:
        if set_id not in {r.id for r in self._sets_for(who)}:
            raise NotFound(f"no resource set {set_id}")
        with self.db.read() as session:
            row = session.get(ResourceSetRow, set_id)
            if row is None:
                raise NotFound(f"no resource set {set_id}")
            return quotas.set_view(session, row, self._subjects(session, set_id))

    @staticmethod
    def _subject_keys(session: Any, set_id: int) -> list[tuple[str, int]]:
        rows = session.scalars(
            select(ResourceSetSubject).where(ResourceSetSubject.set_id == set_id)
        )
        return [(r.subject_kind, r.subject_id) for r in rows]

    @staticmethod
    def _subjects(session: Any, set_id: int) -> list[str]:
        rows = session.scalars(
            select(ResourceSetSubject).where(ResourceSetSubject.set_id == set_id)
        )
        return sorted(subject_name(session, r.subject_kind, r.subject_id) for r in rows)

    def write_resource_set(
        self,
        who: Principal,
        set_id: int | None,
        *,
        name: str,
        limits: Limits,
        templates: list[str],
        host_ids: list[int],
        subjects: list[str],
        count_snapshots: bool,
    ) -> quotas.ResourceSetView:
        action = "resource-set.create" if set_id is None else "resource-set.update"
        with self.cp.ops.audited(who, action, f"resource-set:{set_id or name}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                row = None
                if set_id is not None:
                    row = quotas.lock_set(session, set_id)
                resolved = [resolve_subject(session, s) for s in subjects]
                before = set(self._subject_keys(session, set_id)) if set_id else set()
                self.access.check_set_subjects(
                    session,
                    who,
                    ("/", f"/resource-sets/{set_id}" if set_id else "/resource-sets/new"),
                    added=set(resolved) - before,
                    removed=before - set(resolved),
                )
                row = quotas.write_set(
                    session,
                    row,
                    name=name,
                    limits=limits,
                    templates=templates,
                    host_ids=host_ids,
                    subjects=resolved,
                    count_snapshots=count_snapshots,
                )
                view = quotas.set_view(session, row, self._subjects(session, row.id))
            self.access.invalidate()
            return view

    def delete_resource_set(self, who: Principal, set_id: int) -> None:
        with self.cp.ops.audited(who, "resource-set.delete", f"resource-set:{set_id}"):
            self._require_root(who, P.SYS_MODIFY)
            with self.db.session() as session:
                row = quotas.lock_set(session, set_id)
                vms = session.scalar(select(VmRow.id).where(VmRow.resource_set_id == set_id))
                if vms is not None:
                    raise InvalidInput(f"resource set {row.name!r} still has VMs")
                self.access.check_set_subjects(
                    session,
                    who,
                    ("/", f"/resource-sets/{set_id}"),
                    added=(),
                    removed=self._subject_keys(session, set_id),
                )
                # Its entries go with it: a later set must never inherit them.
                session.execute(
                    delete(AclEntryRow).where(AclEntryRow.path == f"/resource-sets/{set_id}")
                )
                session.delete(row)
            self.access.invalidate()

    def recompute(self, who: Principal) -> dict[str, Any]:
        """Re-read every VM from the hypervisors; report how usage moved (drift)."""
        with self.cp.ops.audited(who, "resource-set.recompute", "resource-sets"):
            self._require_root(who, P.SYS_MODIFY)
            before = {v.id: v.usage for v in self.list_resource_sets(who)}
            report: ReconcileReport = self.cp.inventory.reconcile()
            after = {v.id: v.usage for v in self.list_resource_sets(who)}
        drift = {
            str(k): {"before": before[k].__dict__, "after": after[k].__dict__}
            for k in after
            if k in before and before[k] != after[k]
        }
        return {
            "added": report.added,
            "removed": report.removed,
            "updated": report.updated,
            "unreachable": report.unreachable,
            "drift": drift,
        }

    # -- audit -------------------------------------------------------------------------

    def audit_entries(
        self,
        who: Principal,
        limit: int = 100,
        before: int | None = None,
        *,
        containing: Mapping[str, str] | None = None,
    ) -> list[AuditRow]:
        """The newest entries (before id `before`); `containing` keeps those whose
        actor, action or result contains the text given for it (any case)."""
        self._require_root(who, P.SYS_AUDIT)
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit is between 1 and 1000")
        with self.db.read() as session:
            query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
            if before is not None:
                query = query.where(AuditRow.id < before)
            for column, text in (containing or {}).items():
                if column not in ("actor", "action", "result"):
                    raise InvalidInput(f"entries are not filtered by {column!r}")
                if text:
                    query = query.where(
                        func.lower(getattr(AuditRow, column)).contains(
                            text.lower(), autoescape=True
                        )
                    )
            return list(session.scalars(query))

    def verify_audit(self, who: Principal) -> ChainReport:
        self._require_root(who, P.SYS_AUDIT)
        return self.cp.audit.verify()


def token_expiry(days: float | None) -> datetime | None:
    if days is None:
        return None
    if days <= 0 or days > 3650:
        raise InvalidInput("a token lasts more than 0 and at most 3650 days")
    return datetime.now(UTC) + timedelta(days=days)
