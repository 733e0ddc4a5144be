"""audit entries carry their position in the chain (seq)

The keyed audit chain (services/audit.py) covers each entry's position, and the head
file outside the database counts entries by it. Entries already there are numbered
1, 2, ... in id order; their digests are left as they were (the public formula): the
first server start after this migration appends `audit.keyed`, which seals them into
the keyed chain.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# SQLite rebuilds the table to change it: keep the AUTOINCREMENT that 0002 gave it.
_KEEP = {"sqlite_autoincrement": True}


def upgrade() -> None:
    with op.batch_alter_table("audit", table_kwargs=_KEEP) as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    bind = op.get_bind()
    ids = bind.execute(sa.text("SELECT id FROM audit ORDER BY id")).scalars().all()
    if ids:
        bind.execute(
            sa.text("UPDATE audit SET seq = :seq WHERE id = :id"),
            [{"seq": seq, "id": entry_id} for seq, entry_id in enumerate(ids, start=1)],
        )
    with op.batch_alter_table("audit", table_kwargs=_KEEP) as batch:
        batch.alter_column("seq", existing_type=sa.Integer(), nullable=False)
        batch.create_index("ix_audit_seq", ["seq"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("audit", table_kwargs=_KEEP) as batch:
        batch.drop_index("ix_audit_seq")
        batch.drop_column("seq")
