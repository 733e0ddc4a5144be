"""The tables of dockvisor's state (SQLAlchemy 2). Schema changes go through Alembic.

Secrets are never stored in the clear: passwords as argon2 hashes, API tokens and
session ids as SHA-256 digests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "utc",
    "AclEntryRow",
    "AuditRow",
    "Base",
    "GroupMember",
    "GroupRow",
    "HostRow",
    "LockRow",
    "PoolRow",
    "ResourceSetRow",
    "ResourceSetSubject",
    "RoleRow",
    "SessionRow",
    "TaskRow",
    "TokenRow",
    "UserRow",
    "VmRow",
]


def utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime: every time dockvisor stores is UTC, and
    SQLite gives them back without their zone."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


# An id, once given, is never given again, even after its row is deleted: ACL entries,
# tasks and audit records name users, groups, hosts and resource sets by id, and a new
# object must never inherit what named an old one. (PostgreSQL sequences never reuse;
# SQLite reuses the highest rowid unless the table says AUTOINCREMENT.)
NEVER_REUSE_IDS: dict[str, Any] = {"sqlite_autoincrement": True}


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class GroupRow(Base):
    __tablename__ = "groups"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class GroupMember(Base):
    __tablename__ = "group_members"
    group_id: Mapped[int] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )


class RoleRow(Base):
    __tablename__ = "roles"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    privileges: Mapped[list[str]] = mapped_column(JSON)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")


class AclEntryRow(Base):
    __tablename__ = "acl_entries"
    __table_args__ = (
        UniqueConstraint("subject_kind", "subject_id", "path", "role"),
        NEVER_REUSE_IDS,
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(8))  # "user" | "group"
    subject_id: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255), index=True)
    role: Mapped[str] = mapped_column(String(64))
    propagate: Mapped[bool] = mapped_column(Boolean, default=True)


class TokenRow(Base):
    __tablename__ = "tokens"
    __table_args__ = (UniqueConstraint("user_id", "name"), NEVER_REUSE_IDS)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class SessionRow(Base):
    __tablename__ = "sessions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HostRow(Base):
    __tablename__ = "hosts"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    uri: Mapped[str] = mapped_column(String(255), unique=True)
    # A pool's user and password, sealed (services/host_secrets.py); None for libvirt.
    credentials: Mapped[str | None] = mapped_column(Text, nullable=True, default=None)


class CatalogRow(Base):
    """A template catalog an admin added, and what its last fetch said."""

    __tablename__ = "catalogs"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    public_key: Mapped[str] = mapped_column(String(128))
    updated: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    fetched: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    newest: Mapped[str] = mapped_column(Text, default="{}")  # JSON: template -> version


class PoolRow(Base):
    __tablename__ = "pools"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class ResourceSetRow(Base):
    __tablename__ = "resource_sets"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    max_vcpus: Mapped[int | None] = mapped_column(Integer)
    max_memory: Mapped[int | None] = mapped_column(BigInteger)
    max_disk: Mapped[int | None] = mapped_column(BigInteger)
    max_vms: Mapped[int | None] = mapped_column(Integer)
    templates: Mapped[list[str]] = mapped_column(JSON, default=list)  # allowed; [] = none
    host_ids: Mapped[list[int]] = mapped_column(JSON, default=list)  # allowed; [] = none
    count_snapshots: Mapped[bool] = mapped_column(Boolean, default=False)


class ResourceSetSubject(Base):
    __tablename__ = "resource_set_subjects"
    set_id: Mapped[int] = mapped_column(
        ForeignKey("resource_sets.id", ondelete="CASCADE"), primary_key=True
    )
    subject_kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject_id: Mapped[int] = mapped_column(Integer, primary_key=True)


class VmRow(Base):
    """The inventory: what the hypervisors have, plus what only dockvisor knows (pool,
    resource set, creator). Sizes are the configured (next-boot) ones, for quotas.

    A VM being created has state "creating" and holds its quota before it exists."""

    __tablename__ = "vms"
    __table_args__ = (UniqueConstraint("host_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    hv_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("pools.id", ondelete="SET NULL"))
    resource_set_id: Mapped[int | None] = mapped_column(
        ForeignKey("resource_sets.id", ondelete="SET NULL"), index=True
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    template: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    vcpus: Mapped[int] = mapped_column(Integer, default=0)
    max_vcpus: Mapped[int] = mapped_column(Integer, default=0)
    memory: Mapped[int] = mapped_column(BigInteger, default=0)
    max_memory: Mapped[int] = mapped_column(BigInteger, default=0)
    disk: Mapped[int] = mapped_column(BigInteger, default=0)
    snapshots: Mapped[int] = mapped_column(Integer, default=0)
    docker_ready: Mapped[bool] = mapped_column(Boolean, default=False)
    managed: Mapped[bool] = mapped_column(Boolean, default=True)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The snapshot its users marked as the VM's clean state ("Roll back to clean").
    clean_snapshot: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TaskRow(Base):
    __tablename__ = "tasks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    object_type: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64), index=True)
    requester_id: Mapped[int | None] = mapped_column(Integer)
    requester: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # pending running succeeded failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[str] = mapped_column(String(255), default="")
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(32))
    result: Mapped[dict[str, object] | None] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    instance: Mapped[str] = mapped_column(String(36))  # the server process that ran it
    # Someone asked it to stop: its work raises Cancelled at its next progress report.
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)


class LockRow(Base):
    """One row per locked object: a second conflicting operation fails to insert."""

    __tablename__ = "locks"
    object_key: Mapped[str] = mapped_column(String(96), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(36))
    acquired: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """Append-only and hash-chained: each row's digest covers its position (`seq`, 1, 2,
    ...), its content and the digest of the row before it (see services/audit.py)."""

    __tablename__ = "audit"
    __table_args__ = NEVER_REUSE_IDS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, unique=True, index=True)
    time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(128))
    result: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    prev_digest: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
