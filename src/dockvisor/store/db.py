"""The database: engine, sessions and migrations.

SQLite (a file in the data directory) by default; PostgreSQL when several server
processes share one state. Under SQLite every transaction takes the write lock at its
start (BEGIN IMMEDIATE), so read-check-write sequences such as quota reservations are
serialized across threads and processes; under PostgreSQL they lock rows FOR UPDATE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "default_url"]


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'dockvisor.db'}"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
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
