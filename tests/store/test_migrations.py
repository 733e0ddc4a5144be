"""Migrations keep every row, and after them no id is ever handed out twice."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import delete, select

from dockvisor.services import identity
from dockvisor.store.db import Database
from dockvisor.store.models import GroupMember, GroupRow, ResourceSetRow, TokenRow, UserRow


def test_upgrading_a_0001_database_keeps_rows_and_their_references(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(db._alembic_config(), "0001")
    with db.session() as session:
        user = identity.create_user(session, "alice", "alice-password")
        identity.create_token(session, user, "t")
        identity.create_session(session, user)
        group = identity.create_group(session, "team")
        session.add(GroupMember(group_id=group.id, user_id=user.id))
    db.migrate()
    with db.read() as session:
        alice = session.scalar(select(UserRow).where(UserRow.name == "alice"))
        assert alice is not None
        assert [t.name for t in session.scalars(select(TokenRow))] == ["t"]
        members = session.scalars(select(GroupMember.user_id))
        assert list(members) == [alice.id]
    db.dispose()


def test_a_deleted_newest_row_does_not_give_its_id_to_the_next(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'ids.db'}")
    db.migrate()
    with db.session() as session:
        first = identity.create_user(session, "carol", "carol-password").id
        set_id = ResourceSetRow(name="team", templates=[], host_ids=[])
        session.add(set_id)
        session.add(GroupRow(name="g"))
        session.flush()
        old_set = set_id.id
    with db.session() as session:
        session.execute(delete(UserRow).where(UserRow.id == first))
        session.execute(delete(ResourceSetRow).where(ResourceSetRow.id == old_set))
    with db.session() as session:
        again = identity.create_user(session, "carol", "carol-password").id
        new_set = ResourceSetRow(name="team", templates=[], host_ids=[])
        session.add(new_set)
        session.flush()
        assert again != first
        assert new_set.id != old_set
    db.dispose()
