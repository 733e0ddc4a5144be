"""ids are never reused (SQLite tables with AUTOINCREMENT)

SQLite gives a new row the highest rowid plus one, so deleting the newest user, group,
host or resource set let the next one take its id, and with it whatever still named
that id (ACL entries, resource-set subjects, tasks). Tables declared AUTOINCREMENT never
hand an id out twice. PostgreSQL sequences never did: nothing changes there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = (
    "users",
    "groups",
    "roles",
    "acl_entries",
    "tokens",
    "hosts",
    "pools",
    "resource_sets",
    "audit",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:  # rebuilt with the same columns, rows and ids
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": False}
        ):
            pass
