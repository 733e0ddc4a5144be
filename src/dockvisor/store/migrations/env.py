"""Alembic environment: runs on the engine dockvisor hands it (see store/db.py)."""

from __future__ import annotations

from alembic import context

from dockvisor.store.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    # SQLite rebuilds a table to change it (a copy, then DROP of the old one). With
    # foreign keys on, that DROP would cascade into the rows that point at it, so they
    # are off for the migration, as SQLite's own procedure for altering tables says.
    # The pragma only takes effect outside a transaction: set it on the raw connection
    # before the migration's transaction begins.
    raw = connection.connection.driver_connection if sqlite else None
    if raw is not None:
        raw.execute("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection, target_metadata=Base.metadata, render_as_batch=sqlite
        )
        with context.begin_transaction():
            context.run_migrations()
            if raw is not None:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        if connection.in_transaction():
            connection.commit()
    finally:
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=ON")
