"""template catalogs an admin added, and what their last fetch said

`updated` is the catalog index's own time at the last fetch: a later fetch that gives an
older index is refused (an old signed catalog replayed to hold back updates).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalogs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("public_key", sa.String(128), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fetched", sa.DateTime(timezone=True), nullable=True),
        sa.Column("newest", sa.Text(), nullable=False, server_default="{}"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("catalogs")
