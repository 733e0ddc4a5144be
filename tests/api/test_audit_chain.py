"""The audit chain against someone who can write the database (but not read the key):
newest entries deleted, an entry edited and the chain recomputed (with the old public
formula, with a guessed key), an entry inserted, the table emptied. Each is reported by
GET /api/v1/audit/verify and `dockvisor audit verify` with the entry id and the reason,
and the CLI exits non-zero. A crash between an entry's commit and its head line is
reported as its own condition and repaired (and recorded) by the next start. On SQLite
and PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import DateTime, bindparam, select, text

from dockvisor.services.audit import AuditKeyError, keyed_digest, legacy_digest
from dockvisor.services.runtime import ControlPlane, Settings
from dockvisor.store.db import Database
from dockvisor.store.models import AuditRow
from tests.api.conftest import Server, serve

VENV_BIN = Path(sys.executable).parent


# -- helpers ------------------------------------------------------------------------------


def make_entries(admin: httpx.Client, *names: str) -> None:
    """One audited request per name (a user made through the API)."""
    for name in names:
        made = admin.post("/users", json={"name": name, "password": "long-password"})
        assert made.status_code == 201, made.text


COLUMNS = ("id", "seq", "time", "actor", "action", "object", "result", "detail")


def entries(cp: ControlPlane) -> list[dict[str, Any]]:
    """The audit table as it is in the database, in id order."""
    with cp.db.read() as session:
        rows = session.scalars(select(AuditRow).order_by(AuditRow.id)).all()
    return [
        {**{c: getattr(r, c) for c in COLUMNS}, "prev_digest": r.prev_digest, "digest": r.digest}
        for r in rows
    ]


def insert_raw(db: Database, row: dict[str, Any]) -> None:
    """An audit row written with SQL, not by dockvisor."""
    columns = [c for c in row if c != "id"]
    statement = text(
        f"INSERT INTO audit ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})"
    ).bindparams(bindparam("time", type_=DateTime(timezone=True)))
    with db.session() as session:
        session.execute(statement, row)


def sql(cp: ControlPlane, statement: str, params: dict[str, Any] | None = None) -> None:
    """What someone with write access to the database does."""
    with cp.db.session() as session:
        session.execute(text(statement), params or {})


def cli_verify(
    data: Path, url: str, *heads: Path, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKVISOR_")}
    env["DOCKVISOR_DATA_DIR"] = str(data)
    if key is not None:
        env["DOCKVISOR_AUDIT_KEY_FILE"] = str(key)
    args = [a for h in heads for a in ("--head", str(h))]
    return subprocess.run(
        [str(VENV_BIN / "dockvisor"), "--database-url", url, "audit", "verify", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify(server: Server) -> dict[str, Any]:
    response = server.client("admin").get("/audit/verify")
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_tampered(server: Server, at: int, reason: str) -> None:
    """The API and the CLI both say the chain is broken at entry `at`, for `reason`."""
    report = verify(server)
    assert (report["ok"], report["condition"], report["broken_at"]) == (False, "tampered", at)
    assert reason in report["reason"], report
    cli = cli_verify(server.cp.settings.data_dir, server.cp.settings.database_url)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert f"chain broken at entry {at}: " in cli.stdout, cli.stdout
    assert reason in cli.stdout, cli.stdout


def rechain(cp: ControlPlane, start: int, digest_of: Any) -> None:
    """Recompute every digest from the entry with id `start` on with `digest_of(row,
    prev)`, as someone would who wants a consistent-looking chain."""
    rows = entries(cp)
    prev = next((r["digest"] for r in reversed(rows) if r["id"] < start), "0" * 64)
    for row in rows:
        if row["id"] < start:
            continue
        digest = digest_of(row, prev)
        sql(
            cp,
            "UPDATE audit SET prev_digest = :p, digest = :d WHERE id = :id",
            {"p": prev, "d": digest, "id": row["id"]},
        )
        prev = digest


@contextmanager
def restarted(server: Server) -> Iterator[ControlPlane]:
    """A second server process on the same data directory and database."""
    cp = ControlPlane(server.cp.settings)
    try:
        yield cp
    finally:
        cp.stop()


# -- what an intact chain looks like ---------------------------------------------------------


def test_a_new_server_keeps_a_keyed_chain_with_its_key_and_head_outside_the_database(
    server: Server,
) -> None:
    make_entries(server.client("admin"), "ann", "bob")
    data = server.cp.settings.data_dir
    key, head = data / "audit.key", data / "audit.head"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(head.stat().st_mode) == 0o600
    rows = entries(server.cp)
    secret = bytes.fromhex(key.read_text())
    assert all(
        r["digest"]
        == keyed_digest(
            secret,
            r["seq"],
            r["prev_digest"],
            r["time"],
            r["actor"],
            r["action"],
            r["object"],
            r["result"],
            r["detail"],
        )
        for r in rows
    )
    lines = head.read_text().splitlines()
    assert lines[1:] == [f"{r['seq']} {r['id']} {r['digest']}" for r in rows]
    report = verify(server)
    assert report == {
        "entries": len(rows),
        "ok": True,
        "broken_at": None,
        "reason": "",
        "condition": "intact",
        "keyed_from": rows[0]["id"],
    }
    cli = cli_verify(data, server.cp.settings.database_url)
    assert cli.returncode == 0 and f"{len(rows)} entries, chain intact" in cli.stdout


# -- tampering ------------------------------------------------------------------------------


def test_deleting_the_newest_entries_is_detected_and_stays_detected(server: Server) -> None:
    admin = server.client("admin")
    make_entries(admin, "ann", "bob", "cyd", "dan")
    rows = entries(server.cp)
    gone = rows[-2:]
    sql(server.cp, "DELETE FROM audit WHERE id >= :id", {"id": gone[0]["id"]})
    assert_tampered(server, gone[0]["id"], "the newest 2 entries were removed")

    # The server goes on writing; the entries that now take the removed positions do not
    # hide the removal.
    make_entries(admin, "eve")
    assert_tampered(server, entries(server.cp)[-1]["id"], "others written in their place")


def test_an_entry_edited_and_the_chain_recomputed_with_the_public_formula(
    server: Server,
) -> None:
    make_entries(server.client("admin"), "ann", "bob", "cyd")
    target = next(r for r in entries(server.cp) if r["object"] == "user:bob")
    sql(server.cp, "UPDATE audit SET detail = 'nothing here' WHERE id = :id", {"id": target["id"]})
    rechain(
        server.cp,
        target["id"],
        lambda r, prev: legacy_digest(
            prev, r["time"], r["actor"], r["action"], r["object"], r["result"], r["detail"]
        ),
    )
    assert_tampered(server, target["id"], "recomputed with the public formula")


def test_an_entry_edited_and_the_chain_recomputed_with_a_guessed_key(server: Server) -> None:
    make_entries(server.client("admin"), "ann", "bob", "cyd")
    target = next(r for r in entries(server.cp) if r["object"] == "user:bob")
    sql(
        server.cp,
        "UPDATE audit SET result = 'refused:forbidden' WHERE id = :id",
        {"id": target["id"]},
    )
    guess = secrets.token_bytes(32)
    rechain(
        server.cp,
        target["id"],
        lambda r, prev: keyed_digest(
            guess,
            r["seq"],
            prev,
            r["time"],
            r["actor"],
            r["action"],
            r["object"],
            r["result"],
            r["detail"],
        ),
    )
    assert_tampered(server, target["id"], "entry was changed")


def test_an_inserted_entry_is_detected(server: Server) -> None:
    make_entries(server.client("admin"), "ann", "bob")
    tip = entries(server.cp)[-1]
    when = datetime.now(UTC)
    forged = {
        "seq": tip["seq"] + 1,
        "time": when,
        "actor": "admin",
        "action": "user.delete",
        "object": "user:ann",
        "result": "ok",
        "detail": "",
        "prev_digest": tip["digest"],
    }
    forged["digest"] = keyed_digest(
        secrets.token_bytes(32),
        tip["seq"] + 1,
        tip["digest"],
        when,
        "admin",
        "user.delete",
        "user:ann",
        "ok",
        "",
    )
    insert_raw(server.cp.db, forged)
    inserted = entries(server.cp)[-1]["id"]
    assert_tampered(server, inserted, "entry was inserted")


def test_an_emptied_table_is_detected_even_after_a_restart(server: Server) -> None:
    make_entries(server.client("admin"), "ann", "bob")
    first = entries(server.cp)[0]["id"]
    count = len(entries(server.cp))
    sql(server.cp, "DELETE FROM audit")
    assert_tampered(server, first, f"the newest {count} entries were removed")
    with restarted(server):  # a start does not begin a new chain over the evidence
        pass
    assert_tampered(server, first, f"the newest {count} entries were removed")


# -- what is not tampering ------------------------------------------------------------------


def test_a_crash_between_commit_and_head_line_is_unconfirmed_and_the_next_start_confirms(
    server: Server,
) -> None:
    make_entries(server.client("admin"), "ann", "bob")
    head = server.cp.settings.data_dir / "audit.head"
    # The server dies after committing the newest entry, before its head line is
    # written: the head file is as it was one line earlier.
    lines = head.read_text().splitlines(keepends=True)
    head.write_text("".join(lines[:-1]) + lines[-1][:20])  # and a torn half line
    newest = entries(server.cp)[-1]["id"]
    report = verify(server)
    assert (report["ok"], report["condition"], report["broken_at"]) == (
        False,
        "unconfirmed",
        newest,
    )
    assert "not in the head file yet" in report["reason"]
    cli = cli_verify(server.cp.settings.data_dir, server.cp.settings.database_url)
    assert cli.returncode == 3, cli.stdout + cli.stderr
    assert f"not confirmed (entry {newest}): unconfirmed" in cli.stdout

    with restarted(server) as cp:
        confirmed = [r for r in entries(cp) if r["action"] == "audit.confirmed"]
        assert len(confirmed) == 1 and f"ids {newest}..{newest}" in confirmed[0]["detail"]
    assert verify(server)["condition"] == "intact"


def test_a_missing_head_file_is_reported_then_replaced_on_the_record(server: Server) -> None:
    make_entries(server.client("admin"), "ann")
    (server.cp.settings.data_dir / "audit.head").unlink()
    report = verify(server)
    assert (report["ok"], report["condition"]) == (False, "head-missing")
    cli = cli_verify(server.cp.settings.data_dir, server.cp.settings.database_url)
    assert cli.returncode == 3 and "head-missing" in cli.stdout
    with restarted(server) as cp:
        assert [r["action"] for r in entries(cp)][-1] == "audit.head-recreated"
    assert verify(server)["condition"] == "intact"


def test_a_server_without_the_key_of_a_keyed_chain_refuses_to_start(server: Server) -> None:
    make_entries(server.client("admin"), "ann")
    key = server.cp.settings.data_dir / "audit.key"
    kept = key.read_text()
    key.unlink()
    with pytest.raises(AuditKeyError, match="restore the key file"):
        ControlPlane(server.cp.settings)
    cli = cli_verify(server.cp.settings.data_dir, server.cp.settings.database_url)
    assert cli.returncode == 3 and "key-missing" in cli.stdout
    key.write_text(secrets.token_hex(32))  # another key: not the head file's
    with pytest.raises(AuditKeyError, match="another key"):
        ControlPlane(server.cp.settings)
    key.write_text(kept)
    assert verify(server)["condition"] == "intact"


# -- sharing one database -----------------------------------------------------------------


def test_two_processes_sharing_a_database_and_audit_files_keep_one_chain(
    tmp_path: Path, database_url: str
) -> None:
    shared = tmp_path / "shared"
    first = Settings(
        data_dir=tmp_path / "one",
        database_url=database_url,
        audit_key_file=shared / "audit.key",
        audit_head_file=shared / "audit.head",
    )
    one = ControlPlane(first)
    two = ControlPlane(replace(first, data_dir=tmp_path / "two"))
    try:

        def write(cp: ControlPlane, who: str) -> None:
            for n in range(15):
                cp.audit.append(who, "test.append", f"n:{n}", "ok")

        threads = [
            threading.Thread(target=write, args=(cp, w)) for cp, w in ((one, "a"), (two, "b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report = two.audit.verify()
        assert (report.ok, report.condition, report.entries) == (True, "intact", 30)
        lines = (shared / "audit.head").read_text().splitlines()
        assert len(lines) == 31  # the first line, then one per entry, none torn
    finally:
        one.stop()
        two.stop()


# -- a chain from before the key -------------------------------------------------------------


def test_an_older_unkeyed_chain_is_sealed_by_the_first_keyed_entry(
    tmp_path: Path, database_url: str
) -> None:
    old = Database(database_url)
    command.upgrade(old._alembic_config(), "0002")  # as the previous version left it
    prev = "0" * 64
    for n in range(3):
        when = datetime.now(UTC)
        digest = legacy_digest(prev, when, "admin", "user.create", f"user:u{n}", "ok", "")
        row = {"time": when, "actor": "admin", "action": "user.create"}
        row |= {"object": f"user:u{n}", "result": "ok", "detail": ""}
        insert_raw(old, row | {"prev_digest": prev, "digest": digest})
        prev = digest
    old.dispose()

    cp = ControlPlane(Settings(data_dir=tmp_path / "data", database_url=database_url))
    uv, thread, url = serve(cp)
    srv = Server(cp, url)
    srv.add_user("admin", role="Admin")
    try:
        rows = entries(cp)
        marker = rows[-1]
        assert marker["action"] == "audit.keyed" and marker["seq"] == 4
        assert (
            "3 entries before it use the public SHA-256 formula and were intact"
            in (marker["detail"])
        )
        report = verify(srv)
        assert (report["ok"], report["keyed_from"]) == (True, marker["id"])
        cli = cli_verify(tmp_path / "data", database_url)
        assert cli.returncode == 0, cli.stdout + cli.stderr

        # The old entries can no longer be rewritten unnoticed with the public formula.
        sql(cp, "UPDATE audit SET object = 'user:nobody' WHERE id = :id", {"id": rows[1]["id"]})
        rechain(
            cp,
            rows[1]["id"],
            lambda r, p: (
                r["digest"]
                if r["action"] == "audit.keyed"
                else legacy_digest(
                    p, r["time"], r["actor"], r["action"], r["object"], r["result"], r["detail"]
                )
            ),
        )
        sql(cp, "UPDATE audit SET prev_digest = :p WHERE id = :id", {
            "p": marker["prev_digest"], "id": marker["id"]
        })  # fmt: skip
        assert_tampered(srv, marker["id"], "entry before it was changed or removed")
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()


def test_processes_with_their_own_head_files_are_verified_together(
    tmp_path: Path, database_url: str
) -> None:
    """Two servers on one database with one key but a head file each (one per machine):
    each head file alone leaves the other's newest entries unconfirmed; given both,
    `dockvisor audit verify --head A --head B` confirms the whole chain."""
    key = tmp_path / "audit.key"
    first = Settings(
        data_dir=tmp_path / "one",
        database_url=database_url,
        audit_key_file=key,
        audit_head_file=tmp_path / "one.head",
    )
    one = ControlPlane(first)
    second = replace(first, data_dir=tmp_path / "two", audit_head_file=tmp_path / "two.head")
    try:
        one.audit.append("a", "test.append", "n:1", "ok")
        two = ControlPlane(second)
        try:
            two.audit.append("b", "test.append", "n:2", "ok")
            one.audit.append("a", "test.append", "n:3", "ok")
            two.audit.append("b", "test.append", "n:4", "ok")
        finally:
            two.stop()
        rows = entries(one)
        assert [r["action"] for r in rows].count("audit.head-recreated") == 1  # two's start
        assert one.audit.verify().condition == "unconfirmed"
        heads = (tmp_path / "one.head", tmp_path / "two.head")
        only_one = cli_verify(tmp_path / "one", database_url, heads[0], key=key)
        assert only_one.returncode == 3, only_one.stdout + only_one.stderr
        assert f"(entry {rows[-1]['id']}): unconfirmed" in only_one.stdout
        both = cli_verify(tmp_path / "one", database_url, *heads, key=key)
        assert both.returncode == 0, both.stdout + both.stderr
        assert f"{len(rows)} entries, chain intact" in both.stdout
    finally:
        one.stop()


def test_verify_while_entries_are_appended_never_cries_wolf(
    tmp_path: Path, database_url: str
) -> None:
    cp = ControlPlane(Settings(data_dir=tmp_path / "data", database_url=database_url))
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            cp.audit.append("writer", "test.append", "x", "ok")

    writers = [threading.Thread(target=write) for _ in range(2)]
    for w in writers:
        w.start()
    try:
        while cp.audit.verify().entries < 5:  # the writers are under way
            pass
        reports = [cp.audit.verify() for _ in range(15)]
    finally:
        stop.set()
        for w in writers:
            w.join()
        cp.stop()
    assert [r.condition for r in reports] == ["intact"] * 15, reports
    assert reports[-1].entries > reports[0].entries  # they did run meanwhile
