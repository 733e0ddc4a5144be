"""Why a user holds what they hold: each entry on the chain judged, each privilege traced
to the deciding entry that gives it (domain/effective_access.py, no server)."""

from __future__ import annotations

from dockvisor.domain.acl import AclEntry, AclIndex, SubjectKind, vm_chain
from dockvisor.domain.effective_access import judge_entries, privilege_origins
from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege

ROLES = {name: role.privileges for name, role in BUILTIN_ROLES.items()}
USER, GROUP = SubjectKind.USER, SubjectKind.GROUP
CHAIN = vm_chain("v1", 1)  # /, /hosts/1, /vms/v1


def judged(entries: list[AclEntry], groups: frozenset[int] = frozenset({7})) -> dict[str, str]:
    deciding = AclIndex(entries, ROLES).deciding(1, groups, CHAIN)
    return {
        f"{e.entry.role}@{e.entry.path}": e.why for e in judge_entries(CHAIN, entries, deciding)
    }


def test_a_deeper_group_entry_decides_and_replaces_the_users_own_at_the_root() -> None:
    why = judged([AclEntry(USER, 1, "/", "Viewer"), AclEntry(GROUP, 7, "/hosts/1", "Developer")])
    assert why == {
        "Viewer@/": "replaced by the entries on /hosts/1, deeper in the chain",
        "Developer@/hosts/1": "decides (inherited from /hosts/1)",
    }


def test_the_users_own_entry_beats_the_groups_on_the_same_path() -> None:
    why = judged([AclEntry(GROUP, 7, "/vms/v1", "Admin"), AclEntry(USER, 1, "/vms/v1", "Viewer")])
    assert why["Viewer@/vms/v1"] == "decides (on the object itself)"
    assert why["Admin@/vms/v1"] == "the user's own entries on /vms/v1 come before their groups'"


def test_an_entry_that_does_not_propagate_stays_where_it_is() -> None:
    why = judged([AclEntry(USER, 1, "/", "Admin", propagate=False)])
    assert why == {"Admin@/": "does not propagate below /"}


def test_each_privilege_names_the_deciding_entries_that_give_it() -> None:
    entries = [AclEntry(GROUP, 7, "/hosts/1", "Operator"), AclEntry(GROUP, 7, "/hosts/1", "Viewer")]
    index = AclIndex(entries, ROLES)
    held = index.privileges(1, frozenset({7}), CHAIN)
    origins = privilege_origins(held, index.deciding(1, frozenset({7}), CHAIN), ROLES)
    assert [e.role for e in origins[Privilege.VM_VIEW]] == ["Operator", "Viewer"]
    assert [e.role for e in origins[Privilege.VM_POWER_MGMT]] == ["Operator"]
    assert Privilege.VM_SNAPSHOT not in origins
