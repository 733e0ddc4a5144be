"""The database: engine, sessions and migrations.

SQLite (a file in the data directory) by default; PostgreSQL when several server
processes share one state. Under SQLite every transaction takes the write lock at its
start (BEGIN IMMEDIATE), so read-check-write sequences such as quota reservations are
serialized across threads and processes; under PostgreSQL they lock rows FOR UPDATE.

The SQLite file holds password hashes, the ACL and the audit log: it and its -wal,
-shm and -journal files are readable by their owner only (0600). The file is made 0600
before SQLite opens it, and SQLite gives the files beside it the mode of the database;
files left wider by an older version are narrowed when a `Database` opens them, with a
note in `notices`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "default_url", "restrict_mode"]

SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'dockvisor.db'}"


def restrict_mode(path: Path, mode: int) -> str | None:
    """Take away what `mode` does not allow from an existing file or directory (never
    add): a note saying so if it changed anything, else None."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if current & ~mode == 0:
        return None
    os.chmod(path, current & mode)
    return f"{path} was mode {current:04o}; now {current & mode:04o}"


def _private_sqlite_files(url: str) -> list[str]:
    """Make the database file 0600 if it does not exist yet; narrow it and the files
    beside it to 0600 if an older version left them wider."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return []
    path = Path(database)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with suppress(FileExistsError):  # made by another process meanwhile
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    files = [path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)]
    return [note for f in files if (note := restrict_mode(f, 0o600))]


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # What opening changed that the operator should hear about (file modes).
        self.notices: list[str] = _private_sqlite_files(url) if self.is_sqlite else []
        kwargs: dict[str, Any] = {"future": True}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_size"] = 20
            kwargs["max_overflow"] = 20
        self.engine: Engine = create_engine(url, **kwargs)
        self.read_engine = self.engine
        if self.is_sqlite:
            # Readers get their own engine: under WAL they neither wait for nor block the
            # writer, so a read may happen inside a write transaction of the same thread.
            self.read_engine = create_engine(url, **kwargs)
            _pragmas(self.read_engine)
            _pragmas(self.engine)
            _serialize_writes(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.read_engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one write transaction: committed on success, rolled back on error.
        Do not open one inside another in the same thread (under SQLite it would wait for
        itself)."""
        with self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading only (never committed); safe inside a write session."""
        with self._readers() as session:  # closing ends the transaction, keeps loaded rows
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest migration."""
        command.upgrade(self._alembic_config(), "head")

    def _alembic_config(self) -> Config:
        config = Config()
        location = resources.files("dockvisor.store") / "migrations"
        config.set_main_option("script_location", str(location))
        config.attributes["engine"] = self.engine
        return config

    def dispose(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()


def _pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _serialize_writes(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
