"""Users, groups, passwords, sessions and API tokens.

Passwords are argon2 hashes. Session ids and API tokens are random secrets of which only
a SHA-256 digest is stored; a token is shown once, when it is made. Logging in (and its
throttle) is services/login.py.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dockvisor.domain.naming import validate_vm_name
from dockvisor.errors import AlreadyExists, InvalidInput, NotFound, Unauthorized
from dockvisor.store.models import GroupMember, GroupRow, SessionRow, TokenRow, UserRow, utc

__all__ = [
    "Principal",
    "TokenInfo",
    "authenticate_token",
    "create_group",
    "create_session",
    "create_token",
    "create_user",
    "principal_for",
    "verify_password",
]

_HASHER = PasswordHasher()
SESSION_LIFETIME = timedelta(hours=12)
TOKEN_PREFIX = "dvt_"


def now() -> datetime:
    return datetime.now(UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user, with their groups, authenticated by `via`."""

    user_id: int
    name: str
    group_ids: frozenset[int]
    via: str  # "session", "token", or "local" (the shell on the server's data directory)
    token_id: int | None = None


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    user: str
    created: datetime
    expires: datetime | None
    revoked: bool
    last_used: datetime | None


def validate_password(password: str) -> str:
    if len(password) < 8:
        raise InvalidInput("a password needs at least 8 characters")
    if len(password) > 1024:
        raise InvalidInput("a password has at most 1024 characters")
    return password


def create_user(session: Session, name: str, password: str | None) -> UserRow:
    validate_vm_name(name, what="user name")
    if session.scalar(select(UserRow).where(UserRow.name == name)) is not None:
        raise AlreadyExists(f"a user named {name!r} already exists")
    user = UserRow(
        name=name,
        password_hash=_HASHER.hash(validate_password(password)) if password else None,
        disabled=False,
        created=now(),
    )
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, user: UserRow, password: str) -> None:
    user.password_hash = _HASHER.hash(validate_password(password))


def create_group(session: Session, name: str) -> GroupRow:
    validate_vm_name(name, what="group name")
    if session.scalar(select(GroupRow).where(GroupRow.name == name)) is not None:
        raise AlreadyExists(f"a group named {name!r} already exists")
    group = GroupRow(name=name)
    session.add(group)
    session.flush()
    return group


def user_by_name(session: Session, name: str) -> UserRow:
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    if user is None:
        raise NotFound(f"no user named {name!r}")
    return user


def group_by_name(session: Session, name: str) -> GroupRow:
    group = session.scalar(select(GroupRow).where(GroupRow.name == name))
    if group is None:
        raise NotFound(f"no group named {name!r}")
    return group


def principal_for(
    session: Session, user: UserRow, via: str, token_id: int | None = None
) -> Principal:
    groups = session.scalars(select(GroupMember.group_id).where(GroupMember.user_id == user.id))
    return Principal(user.id, user.name, frozenset(groups), via, token_id)


def verify_password(session: Session, name: str, password: str) -> UserRow:
    """The user if `password` is theirs; Unauthorized (the same for every cause) if not."""
    user = session.scalar(select(UserRow).where(UserRow.name == name))
    refused = Unauthorized("wrong user name or password")
    if user is None or user.disabled or not user.password_hash:
        _HASHER.hash("spend-the-same-time")  # no hint that the user does not exist
        raise refused
    try:
        _HASHER.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        raise refused from None
    return user


def create_session(session: Session, user: UserRow) -> tuple[str, str]:
    """A new login session: (session secret for the cookie, CSRF token)."""
    secret = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    session.add(
        SessionRow(
            digest=digest(secret),
            user_id=user.id,
            csrf=csrf,
            created=now(),
            expires=now() + SESSION_LIFETIME,
        )
    )
    return secret, csrf


def authenticate_session(session: Session, secret: str) -> tuple[UserRow, str]:
    """The user and CSRF token of a live session; Unauthorized otherwise."""
    row = session.get(SessionRow, digest(secret))
    if row is None or utc(row.expires) < now():
        raise Unauthorized("the session has expired; log in again")
    user = session.get(UserRow, row.user_id)
    if user is None or user.disabled:
        raise Unauthorized("the session's user is gone or disabled")
    return user, row.csrf


def end_session(session: Session, secret: str) -> None:
    session.execute(delete(SessionRow).where(SessionRow.digest == digest(secret)))


def create_token(
    session: Session, user: UserRow, name: str, expires: datetime | None = None
) -> tuple[TokenRow, str]:
    """A new API token: its row and its secret (shown once, never stored)."""
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(
            f"token name {name!r} is not valid: use 1-64 letters, digits, '-' and '_'"
        )
    if expires is not None and utc(expires) <= now():
        raise InvalidInput("a token's expiry must be in the future")
    exists = session.scalar(
        select(TokenRow).where(TokenRow.user_id == user.id, TokenRow.name == name)
    )
    if exists is not None:
        raise AlreadyExists(f"user {user.name!r} already has a token named {name!r}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = TokenRow(
        user_id=user.id,
        name=name,
        digest=digest(secret),
        created=now(),
        expires=expires,
        revoked=False,
    )
    session.add(row)
    session.flush()
    return row, secret


def authenticate_token(session: Session, secret: str) -> tuple[UserRow, TokenRow]:
    row = session.scalar(select(TokenRow).where(TokenRow.digest == digest(secret)))
    if row is None or row.revoked:
        raise Unauthorized("the API token is not valid")
    if row.expires is not None and utc(row.expires) <= now():
        raise Unauthorized(f"the API token {row.name!r} expired on {row.expires:%Y-%m-%d %H:%M}")
    user = session.get(UserRow, row.user_id)
    if user is None or user.disabled:
        raise Unauthorized("the token's user is gone or disabled")
    row.last_used = now()
    return user, row


def token_info(row: TokenRow, user: str) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        name=row.name,
        user=user,
        created=utc(row.created),
        expires=utc(row.expires) if row.expires else None,
        revoked=row.revoked,
        last_used=utc(row.last_used) if row.last_used else None,
    )


class RecentTokens:
    """API tokens seen valid in the last `ttl` seconds, with who they are: a request with
    one is authenticated without the database. Revoking a token, disabling or deleting a
    user or changing anyone's access clears it here; another server process sharing the
    database sees such a change within `ttl` (as it sees ACL changes)."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.ttl = ttl
        self._seen: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, secret: str) -> Principal | None:
        key = digest(secret)
        with self._lock:
            entry = self._seen.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def remember(self, secret: str, who: Principal, expires: datetime | None = None) -> None:
        """Remember for `ttl` seconds, never past the token's own expiry."""
        until = time.monotonic() + self.ttl
        if expires is not None:
            until = min(until, time.monotonic() + (utc(expires) - now()).total_seconds())
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[digest(secret)] = (until, who)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()
