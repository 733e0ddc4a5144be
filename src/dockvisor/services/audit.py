"""The audit log: append-only, each entry chained to the one before by a keyed digest.

Who did what to which object, and how it ended, for every mutating request and every
login. The rules that make tampering by someone who can write the database detectable:

- **Keyed chain.** An entry's digest is HMAC-SHA256, under the audit key, of its position
  in the chain (`seq`), the digest before it and its content. The key is a file outside
  the database (`audit.key` in the data directory, mode 0600, made at first start).
  Without it nobody can make a changed, inserted or re-chained entry verify: recomputing
  the chain with a formula, or with a guessed key, gives digests that do not.
- **Head file outside the database.** `audit.head`, beside the key, repeats the position,
  id and digest of every entry appended since it was made, one line each, in a file that
  is only ever appended to (O_APPEND, one write per line, so lines of concurrent writers
  never interleave). Removing the newest entries, emptying the table, or removing
  entries and letting new ones take their positions all leave lines that the database no
  longer matches; its count is the number of the last line.
- **Order of writes.** An entry is committed first and its head line written second, so
  the head file never lists an entry the database does not hold: a crash between the two
  leaves entries the head file does not list yet, which `verify` reports as
  "unconfirmed", never as tampering. The next start checks their digests, writes their
  lines and records in the chain that it did (`audit.confirmed`).
- **Older chains.** Entries from before the keyed chain (digests by a public SHA-256
  formula) keep their digests. The first start with a key appends `audit.keyed`, whose
  keyed digest covers the last of them, so from then on they cannot be changed
  unnoticed either; the head file's first line says where the keyed segment starts.
- **Several processes.** Every process that appends to one database must use the same
  key file and the same head file (settings of `Settings`; by default both live in the
  data directory, so processes sharing one PostgreSQL database share a data directory on
  one machine or are pointed at the same two files). A head file confirms the entries
  appended through it and, through the chain, every entry before them; entries appended
  by a process with another head file show as unconfirmed unless verify is given both
  (`dockvisor audit verify --head A --head B`).

What it cannot detect: someone who can read the key file can forge a consistent chain,
and if they can also write the head file they can make it agree; the database and the
head file rolled back together to an earlier copy of both; entries removed while they
were unconfirmed (after a crash, before the next start).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dockvisor.errors import DockvisorError
from dockvisor.paths import create_private_file
from dockvisor.store.db import Database
from dockvisor.store.models import AuditRow, utc

__all__ = [
    "GENESIS",
    "HEAD_MISSING",
    "INTACT",
    "KEY_MISMATCH",
    "KEY_MISSING",
    "TAMPERED",
    "UNCONFIRMED",
    "UNKEYED",
    "AuditFiles",
    "AuditKeyError",
    "AuditLog",
    "ChainReport",
    "check_chain",
    "key_id",
    "keyed_digest",
    "legacy_digest",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
KEY_BYTES = 32
_HEAD_MAGIC = "dockvisor-audit-head 1"
_KEY_ID_LABEL = b"dockvisor audit key id"

# ChainReport.condition
INTACT = "intact"  # every entry verifies and the head file lists the newest
UNKEYED = "unkeyed"  # no key yet: only the public formula was checked
TAMPERED = "tampered"  # an entry was changed, inserted or removed
UNCONFIRMED = "unconfirmed"  # entries verify but the head file does not list them yet
HEAD_MISSING = "head-missing"  # entries verify, but there is no head file to count them
KEY_MISSING = "key-missing"  # keyed entries, but no key to check them with
KEY_MISMATCH = "key-mismatch"  # the head file was written under another key


class AuditKeyError(DockvisorError):
    """The audit key or head file cannot be used: missing while the chain needs it, or
    not the one the chain was written with. The server refuses to start rather than
    begin a chain nobody can check."""

    code = "audit-key"


@dataclass(frozen=True)
class AuditFiles:
    """Where the audit key and the head file live (outside the database)."""

    key: Path
    head: Path


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found. `ok` only for "intact" and "unkeyed"; `broken_at` is the id of
    the first entry concerned (for removed entries: the first removed one)."""

    entries: int
    ok: bool
    broken_at: int | None = None
    reason: str = ""
    condition: str = INTACT
    keyed_from: int | None = None  # id of the first keyed entry (earlier: public formula)


# -- digests ----------------------------------------------------------------------------


def _stamp(when: datetime) -> str:
    return utc(when).astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def legacy_digest(
    prev: str, when: datetime, actor: str, action: str, obj: str, result: str, detail: str
) -> str:
    """The public formula of entries written before the keyed chain (anyone can compute
    it: it detects accidents, not tampering)."""
    body = json.dumps(
        [prev, _stamp(when), actor, action, obj, result, detail], separators=(",", ":")
    )
    return hashlib.sha256(body.encode()).hexdigest()


def keyed_digest(
    key: bytes,
    seq: int,
    prev: str,
    when: datetime,
    actor: str,
    action: str,
    obj: str,
    result: str,
    detail: str,
) -> str:
    """HMAC-SHA256 under the audit key of the entry's position, predecessor and content."""
    body = json.dumps(
        ["dockvisor-audit-2", seq, prev, _stamp(when), actor, action, obj, result, detail],
        separators=(",", ":"),
    )
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def _legacy_of(row: AuditRow) -> str:
    return legacy_digest(
        row.prev_digest, row.time, row.actor, row.action, row.object, row.result, row.detail
    )


def _keyed_of(key: bytes, row: AuditRow, seq: int, prev: str) -> str:
    return keyed_digest(
        key, seq, prev, row.time, row.actor, row.action, row.object, row.result, row.detail
    )


def key_id(key: bytes) -> str:
    """A name for the key that says nothing about it (written in the head file)."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


# -- the key and head files -------------------------------------------------------------


def _private(path: Path, notes: list[str]) -> None:
    """Mode 0600 on an existing file; a note if it was wider."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        notes.append(f"{path} was mode {mode:04o}; now 0600")


def _drop_torn_line(path: Path, notes: list[str]) -> None:
    """Cut a half-written last line (a crash mid-write) off the head file, so that the
    next line starts on a line of its own. Only a start does this, with no append
    running in this process."""
    with open(path, "rb+") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)
    notes.append(f"dropped the half-written last line of {path} (a crash while writing it)")


def _read_key(path: Path) -> bytes | None:
    try:
        text_ = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text_)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise AuditKeyError(f"{path} is not a dockvisor audit key ({KEY_BYTES} bytes in hex)")
    return key


@dataclass
class _Head:
    """The head file(s) as read: where the keyed segment starts and every recorded
    (id, digest) by position. A torn last line (a crash mid-write) is ignored."""

    key_id: str
    keyed_from: int
    lines: dict[int, list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def last(self) -> int:
        return max(self.lines, default=self.keyed_from - 1)

    def add(self, seq: int, entry_id: int, digest: str) -> None:
        recorded = self.lines.setdefault(seq, [])
        if (entry_id, digest) not in recorded:
            recorded.append((entry_id, digest))


class _HeadDamaged(Exception):
    pass


def _parse_head(path: Path) -> _Head | None:
    try:
        content = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    complete, _, _torn = content.rpartition("\n")
    rows = complete.split("\n") if complete else []
    if not rows:
        raise _HeadDamaged(f"{path} is empty")
    magic, _, rest = rows[0].rpartition(" key=")
    key_part, _, from_part = rest.partition(" from=")
    if magic != _HEAD_MAGIC or not from_part.isdigit():
        raise _HeadDamaged(f"{path} does not start with a dockvisor head line")
    head = _Head(key_part, int(from_part))
    for number, row in enumerate(rows[1:], start=2):
        parts = row.split(" ")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            raise _HeadDamaged(f"{path} line {number} is damaged: {row[:80]!r}")
        head.add(int(parts[0]), int(parts[1]), parts[2])
    return head


def _read_heads(paths: Sequence[Path]) -> _Head | None:
    """The head files merged (None if none exists). They must agree on key and start."""
    merged: _Head | None = None
    for path in paths:
        head = _parse_head(path)
        if head is None:
            continue
        if merged is None:
            merged = head
            continue
        if (head.key_id, head.keyed_from) != (merged.key_id, merged.keyed_from):
            raise _HeadDamaged(f"{path} was written under another key or chain start")
        for seq, recorded in head.lines.items():
            for entry_id, digest in recorded:
                merged.add(seq, entry_id, digest)
    return merged


# -- checking a chain -------------------------------------------------------------------


def check_chain(
    rows: Iterable[AuditRow],
    key: bytes | None,
    head: _Head | None,
    reread: Callable[[], _Head | None] | None = None,
) -> ChainReport:
    """Walk the entries in id order against the key and the head file.

    Without a head file each entry is taken as keyed if its keyed digest verifies, else as
    an older entry if it comes before every keyed one and its public digest verifies.
    `head` must be read before the database: every line in it then names an entry the
    walk sees. Entries past its last line may have been appended while the walk ran;
    `reread` reads the head file again after the walk to confirm them."""
    keyed_from = head.keyed_from if head is not None else None
    prev, position, last_id = GENESIS, 0, None
    first_keyed: int | None = None
    tail: list[tuple[int, int, str]] = []  # (seq, id, digest) past the head's last line
    head_last = head.last if head is not None else 0

    def broken(row_id: int | None, reason: str, condition: str = TAMPERED) -> ChainReport:
        return ChainReport(position, False, row_id, reason, condition, first_keyed)

    for row in rows:
        position += 1
        if row.prev_digest != prev:
            return broken(row.id, "entry before it was changed or removed")
        if row.seq != position:
            return broken(
                row.id,
                f"entry is numbered #{row.seq} at position #{position}: an entry before "
                "it was removed or one was inserted",
            )
        keyed = keyed_from is not None and position >= keyed_from
        if keyed_from is None and key is not None:  # no head file: tell by the digest
            keyed = first_keyed is not None or hmac.compare_digest(
                row.digest, _keyed_of(key, row, position, prev)
            )
        if keyed:
            if key is None:
                return broken(
                    row.id, "the entry is keyed and the audit key is missing", KEY_MISSING
                )
            first_keyed = row.id if first_keyed is None else first_keyed
            if not hmac.compare_digest(row.digest, _keyed_of(key, row, position, prev)):
                return broken(row.id, _why_not_keyed(row, position, head_last, head))
        elif row.digest != _legacy_of(row):
            if key is None and head is None:
                return broken(
                    row.id,
                    "the digest is not the public formula's: the chain is keyed (or the "
                    "entry was changed) and there is no audit key to check it with",
                    KEY_MISSING,
                )
            return broken(row.id, "entry was changed")
        for entry_id, digest in head.lines.get(position, ()) if head is not None else ():
            if (entry_id, digest) != (row.id, row.digest):
                return broken(
                    row.id,
                    f"the head file lists entry #{position} as id {entry_id} with another "
                    f"digest; the database holds id {row.id} there: entries were removed "
                    "and others written in their place",
                )
        if head is not None and position > head_last:
            tail.append((position, row.id, row.digest))
        prev, last_id = row.digest, row.id

    if head is None:
        if key is None:
            return ChainReport(
                position,
                True,
                None,
                "no audit key yet: only the public formula was checked, which catches "
                "accidents, not tampering (the server makes a key at its next start)",
                UNKEYED,
            )
        if position == 0:
            return ChainReport(0, True, condition=INTACT)
        return ChainReport(
            position,
            False,
            None,
            "no head file: every entry verifies, but whether the newest were removed "
            "cannot be told (the server makes a new head file at its next start and "
            "records that in the chain)",
            HEAD_MISSING,
            first_keyed,
        )
    if head_last > position:
        missing = sorted(seq for seq in head.lines if seq > position)
        ids = [head.lines[seq][0][0] for seq in missing]
        ends = f"#{position} (id {last_id})" if last_id is not None else "no entry at all"
        return ChainReport(
            position,
            False,
            ids[0],
            f"the newest {head_last - position} entries were removed: the head file lists "
            f"up to #{head_last} (ids {ids[0]}..{ids[-1]} and those before them), the "
            f"database ends at {ends}",
            TAMPERED,
            first_keyed,
        )
    later = reread() if tail and reread is not None else None
    if later is not None:
        for seq, entry_id, digest in tail:
            for listed in later.lines.get(seq, ()):
                if listed != (entry_id, digest):
                    return ChainReport(
                        position,
                        False,
                        entry_id,
                        f"the head file lists entry #{seq} as id {listed[0]} with another "
                        "digest: entries were removed and others written in their place",
                        TAMPERED,
                        first_keyed,
                    )
        # An entry the chain links to a listed one after it is confirmed by that line.
        tail = [t for t in tail if t[0] > later.last]
    if tail:
        return ChainReport(
            position,
            False,
            tail[0][1],
            f"{len(tail)} entries (ids {tail[0][1]}..{tail[-1][1]}) verify but are not in "
            "the head file yet: the server stopped between writing an entry and its head "
            "line (its next start confirms them and records that in the chain), or a "
            "process writing to this database uses another head file",
            UNCONFIRMED,
            first_keyed,
        )
    return ChainReport(position, True, None, "", INTACT, first_keyed)


def _why_not_keyed(row: AuditRow, position: int, head_last: int, head: _Head | None) -> str:
    if row.digest == _legacy_of(row):
        return "entry was changed and its digest recomputed with the public formula"
    if head is not None and position > head_last:
        return "entry was inserted: its digest was not made with the audit key"
    return "entry was changed"


# -- the log ------------------------------------------------------------------------------


class AuditLog:
    """The audit log of one database, with its key and head file.

    `prepare` must run once before `append` (the server and the CLI commands that write
    do it at start); `verify` needs nothing prepared and changes nothing."""

    def __init__(self, db: Database, files: AuditFiles) -> None:
        self._db = db
        self.files = files
        self._lock = threading.Lock()
        self._key: bytes | None = None

    # -- start ---------------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Make the key and head file if this is the first start, confirm entries a crash
        left unconfirmed, and begin the keyed segment after an older chain. Returns notes
        for the operator (what it made or changed). AuditKeyError if the chain in the
        database needs a key or head file this process does not have."""
        notes: list[str] = []
        key = _read_key(self.files.key)
        try:
            head = _parse_head(self.files.head)
        except _HeadDamaged as exc:
            raise AuditKeyError(
                f"audit head file: {exc}; move it aside to start a new one"
            ) from exc
        tip = self._tip()
        if key is None:
            if head is not None or (tip is not None and tip.digest != _legacy_of(tip)):
                raise AuditKeyError(
                    f"there is no audit key at {self.files.key}, but the audit log in the "
                    "database is keyed: restore the key file (every server process "
                    "writing to one database needs the same key)"
                )
            key = secrets.token_bytes(KEY_BYTES)
            if create_private_file(self.files.key, key.hex() + "\n"):
                notes.append(
                    f"made the audit key {self.files.key} (mode 0600): keep a copy apart "
                    "from the database's backups"
                )
            else:  # another process made it first
                key = _read_key(self.files.key)
                assert key is not None
        else:
            _private(self.files.key, notes)
        self._key = key
        if head is None:
            self._new_head(key, tip, notes)
        elif head.key_id != key_id(key):
            raise AuditKeyError(
                f"the audit head file {self.files.head} was written under another key "
                f"than {self.files.key}: every process writing to one database needs the "
                "same key and head file"
            )
        else:
            _private(self.files.head, notes)
            _drop_torn_line(self.files.head, notes)
            if tip is not None and tip.seq > head.last:
                self._confirm_tail(key, head, notes)
        return notes

    def _tip(self) -> AuditRow | None:
        with self._db.read() as session:
            return session.scalar(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1))

    def _new_head(self, key: bytes, tip: AuditRow | None, notes: list[str]) -> None:
        """The first head file: from the first entry on a new database; after the last
        older entry on a database from before the keyed chain; or, if the head file was
        lost, from the first keyed entry on, with that loss recorded in the chain."""
        if tip is None or tip.digest == _legacy_of(tip):
            keyed_from = tip.seq + 1 if tip is not None else 1
            if not self._write_head(key, keyed_from):
                return  # another process made it first
            notes.append(f"made the audit head file {self.files.head}")
            if tip is not None:
                before = self.verify()
                state = "intact" if before.ok else f"broken at entry {before.broken_at}"
                self.append(
                    "dockvisor",
                    "audit.keyed",
                    "audit",
                    "ok",
                    f"the keyed chain (HMAC-SHA256) starts here; the {tip.seq} entries "
                    f"before it use the public SHA-256 formula and were {state} "
                    f"at this point",
                )
                notes.append(f"the audit log is keyed from entry #{keyed_from} on")
            return
        with self._db.read() as session:
            before = check_chain(_all_rows(session), key, None)
        first = self._seq_of(before.keyed_from) if before.keyed_from is not None else 1
        if not self._write_head(key, first):
            return
        state = "verified" if before.ok or before.condition == HEAD_MISSING else "was broken"
        self.append(
            "dockvisor",
            "audit.head-recreated",
            "audit",
            "ok",
            f"there was no head file at {self.files.head}: a new one counts entries from "
            f"here on; whether entries before this one were removed cannot be told; the "
            f"chain {state} at this point",
        )
        notes.append(
            f"WARNING: the audit head file {self.files.head} was missing; made a new one "
            "(recorded in the audit log)"
        )

    def _write_head(self, key: bytes, keyed_from: int) -> bool:
        return create_private_file(
            self.files.head, f"{_HEAD_MAGIC} key={key_id(key)} from={keyed_from}\n"
        )

    def _seq_of(self, entry_id: int) -> int:
        with self._db.read() as session:
            row = session.get(AuditRow, entry_id)
            return row.seq if row is not None else 1

    def _confirm_tail(self, key: bytes, head: _Head, notes: list[str]) -> None:
        """Entries past the head file's last line (a crash between commit and head line):
        if they verify and link to the last confirmed one, write their lines and record
        that in the chain."""
        with self._db.read() as session:
            anchor = session.scalar(select(AuditRow).where(AuditRow.seq == head.last))
            rows = list(
                session.scalars(
                    select(AuditRow).where(AuditRow.seq > head.last).order_by(AuditRow.seq)
                )
            )
        prev = anchor.digest if anchor is not None else GENESIS
        for seq, row in enumerate(rows, start=head.last + 1):
            if (
                row.seq != seq
                or row.prev_digest != prev
                or not hmac.compare_digest(row.digest, _keyed_of(key, row, seq, prev))
            ):
                notes.append(
                    f"WARNING: audit entry {row.id} past the head file does not verify; "
                    "left for `dockvisor audit verify` to report"
                )
                return
            prev = row.digest
        for row in rows:
            self._record(row.seq, row.id, row.digest)
        self.append(
            "dockvisor",
            "audit.confirmed",
            "audit",
            "ok",
            f"{len(rows)} entries (ids {rows[0].id}..{rows[-1].id}) were in the database "
            "but not in the head file (a process stopped between the two writes, or was "
            "between them at this moment); their digests verify: confirmed at start",
        )
        notes.append(f"confirmed {len(rows)} audit entries a stopped server left unconfirmed")

    # -- writing -------------------------------------------------------------------------

    def append(self, actor: str, action: str, obj: str, result: str, detail: str = "") -> None:
        """Write one entry in its own transaction (it stays even if the caller fails),
        then its head line: never the line first, so the head file never names an entry
        the database does not hold."""
        key = self._key
        if key is None:
            raise AuditKeyError("the audit log was not prepared (no key loaded)")
        with self._lock:
            with self._db.session() as session:
                seq, entry_id, digest = self._append(
                    session, key, actor, action, obj, result, detail[:2000]
                )
            self._record(seq, entry_id, digest)

    def _append(
        self,
        session: Session,
        key: bytes,
        actor: str,
        action: str,
        obj: str,
        result: str,
        detail: str,
    ) -> tuple[int, int, str]:
        if not self._db.is_sqlite:  # several server processes: one writer at a time
            session.execute(text("SELECT pg_advisory_xact_lock(7312001)"))
        last = session.scalar(select(AuditRow).order_by(AuditRow.seq.desc()).limit(1))
        prev = last.digest if last is not None else GENESIS
        seq = last.seq + 1 if last is not None else 1
        when = datetime.now(UTC)
        row = AuditRow(
            seq=seq,
            time=when,
            actor=actor,
            action=action,
            object=obj[:128],
            result=result,
            detail=detail,
            prev_digest=prev,
            digest=keyed_digest(key, seq, prev, when, actor, action, obj[:128], result, detail),
        )
        session.add(row)
        session.flush()
        return seq, row.id, row.digest

    def _record(self, seq: int, entry_id: int, digest: str) -> None:
        """Append one head line. The file is never created here: a head file that
        vanished must show as missing, not start again quietly."""
        try:
            fd = os.open(self.files.head, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            log.error("audit entry %s not written to the head file: %s", entry_id, exc)
            return
        try:
            os.write(fd, f"{seq} {entry_id} {digest}\n".encode())
        finally:
            os.close(fd)

    # -- checking ------------------------------------------------------------------------

    def verify(self, heads: Sequence[Path] = ()) -> ChainReport:
        """Check every entry against the key and the head file(s) (default: this log's
        head file; several are merged). Reads only."""
        paths = tuple(heads) or (self.files.head,)
        try:
            key = _read_key(self.files.key)
        except AuditKeyError as exc:
            return ChainReport(0, False, None, str(exc), KEY_MISSING)
        try:
            head = _read_heads(paths)  # before the database: see check_chain
        except _HeadDamaged as exc:
            return ChainReport(0, False, None, f"{exc}", TAMPERED)
        if head is not None and (key is None or head.key_id != key_id(key)):
            condition = KEY_MISSING if key is None else KEY_MISMATCH
            return ChainReport(
                0,
                False,
                None,
                f"the head file was written under key {head.key_id}; "
                + (
                    f"there is no key at {self.files.key}"
                    if key is None
                    else f"{self.files.key} is key {key_id(key)}"
                ),
                condition,
            )
        with self._db.read() as session:
            return check_chain(_all_rows(session), key, head, lambda: self._reread(paths))

    def _reread(self, paths: Sequence[Path]) -> _Head | None:
        """The head file(s) again, once every append that may have committed before the
        walk has written its line: this process's appends hold the lock from commit to
        line; another process's line follows its commit at once unless it died (give
        it a moment)."""
        time.sleep(0.1)
        with self._lock:
            try:
                return _read_heads(paths)
            except _HeadDamaged:
                return None  # the next verify reports it; the first read was whole


def _all_rows(session: Session) -> Iterable[AuditRow]:
    return session.scalars(select(AuditRow).order_by(AuditRow.id).execution_options(yield_per=500))
