"""The built-in roles, derived from the privilege table."""

from __future__ import annotations

import pytest

from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege, parse_privileges

P = Privilege


def test_roles_nest_by_tier() -> None:
    viewer, operator, developer, admin = (
        BUILTIN_ROLES[n].privileges for n in ("Viewer", "Operator", "Developer", "Admin")
    )
    assert viewer < operator < developer < admin
    assert admin == frozenset(Privilege) and BUILTIN_ROLES["NoAccess"].privileges == frozenset()


def test_the_developer_sandbox_grows_but_does_not_delete_or_allocate() -> None:
    developer = BUILTIN_ROLES["Developer"].privileges
    assert {P.VM_SNAPSHOT, P.VM_SNAPSHOT_ROLLBACK, P.VM_CLONE, P.DOCKER_EXEC} <= developer
    assert {P.VM_CONFIG_CPU, P.VM_CONFIG_MEMORY} <= developer  # live, within the maximums
    assert not {P.VM_DELETE, P.VM_ALLOCATE, P.PERMISSIONS_MODIFY} & developer


def test_rolling_back_is_not_taking_a_snapshot() -> None:
    assert P.VM_SNAPSHOT != P.VM_SNAPSHOT_ROLLBACK
    assert parse_privileges(["VM.Snapshot.Rollback"]) == {P.VM_SNAPSHOT_ROLLBACK}


def test_unknown_privilege_names_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown privilege 'VM.Fly'"):
        parse_privileges(["VM.View", "VM.Fly"])
