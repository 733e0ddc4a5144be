"""The audit log: append-only, each entry chained to the one before by a SHA-256 digest.

Who did what to which object, and how it ended, for every mutating request and every
login. `verify` recomputes the chain: an entry changed, removed or inserted afterwards
breaks it at that point.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dockvisor.store.db import Database
from dockvisor.store.models import AuditRow, utc

__all__ = ["GENESIS", "AuditLog", "ChainReport"]

GENESIS = "0" * 64


def _digest(
    prev: str, when: datetime, actor: str, action: str, obj: str, result: str, detail: str
) -> str:
    stamp = utc(when).astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    body = json.dumps([prev, stamp, actor, action, obj, result, detail], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    entries: int
    ok: bool
    broken_at: int | None = None
    reason: str = ""


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()

    def append(self, actor: str, action: str, obj: str, result: str, detail: str = "") -> None:
        """Write one entry in its own transaction (it stays even if the caller fails)."""
        with self._lock, self._db.session() as session:
            self._append(session, actor, action, obj, result, detail[:2000])

    def _append(
        self, session: Session, actor: str, action: str, obj: str, result: str, detail: str
    ) -> None:
        if not self._db.is_sqlite:  # several server processes: one writer at a time
            session.execute(text("SELECT pg_advisory_xact_lock(7312001)"))
        last = session.scalar(select(AuditRow).order_by(AuditRow.id.desc()).limit(1))
        prev = last.digest if last is not None else GENESIS
        when = datetime.now(UTC)
        session.add(
            AuditRow(
                time=when,
                actor=actor,
                action=action,
                object=obj[:128],
                result=result,
                detail=detail,
                prev_digest=prev,
                digest=_digest(prev, when, actor, action, obj[:128], result, detail),
            )
        )

    def verify(self) -> ChainReport:
        prev = GENESIS
        count = 0
        with self._db.read() as session:
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                count += 1
                if row.prev_digest != prev:
                    return ChainReport(
                        count, False, row.id, "entry before it was changed or removed"
                    )
                expected = _digest(
                    prev, row.time, row.actor, row.action, row.object, row.result, row.detail
                )
                if row.digest != expected:
                    return ChainReport(count, False, row.id, "entry was changed")
                prev = row.digest
        return ChainReport(count, True)
