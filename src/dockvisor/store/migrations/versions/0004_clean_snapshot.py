"""a VM may name one of its snapshots as its clean state

The web page offers it as one "Roll back to clean" button; the API sets it with
PUT /vms/ID/clean-snapshot.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.add_column(sa.Column("clean_snapshot", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vms") as batch:
        batch.drop_column("clean_snapshot")
