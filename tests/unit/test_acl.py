"""ACL inheritance, as fixtures and expected privilege sets (the way Proxmox tests it)."""

from __future__ import annotations

import random

from dockvisor.domain.acl import AclEntry, AclIndex, SubjectKind, vm_chain
from dockvisor.domain.privileges import BUILTIN_ROLES, Privilege

U, G = SubjectKind.USER, SubjectKind.GROUP
ROLES = {name: role.privileges for name, role in BUILTIN_ROLES.items()}
P = Privilege
ALICE, BOB, CAROL = 1, 2, 3
DEVS, OPS = 10, 11

ENTRIES = [
    AclEntry(U, ALICE, "/", "Admin"),
    AclEntry(G, DEVS, "/hosts/1", "Viewer"),
    AclEntry(U, BOB, "/vms/a", "Developer"),
    AclEntry(G, DEVS, "/vms/a", "Operator"),
    AclEntry(G, OPS, "/pools/7", "Operator"),
    AclEntry(U, CAROL, "/hosts/1", "Admin", propagate=False),
    AclEntry(G, DEVS, "/vms/secret", "NoAccess"),
    AclEntry(U, ALICE, "/vms/narrow", "Viewer"),
]
INDEX = AclIndex(ENTRIES, ROLES)


def held(user: int, groups: set[int], chain: tuple[str, ...]) -> frozenset[Privilege]:
    return INDEX.privileges(user, frozenset(groups), chain)


def test_root_entry_reaches_every_vm() -> None:
    assert held(ALICE, set(), vm_chain("a", 1)) == ROLES["Admin"]
    assert held(ALICE, set(), vm_chain("z", 2, 7)) == ROLES["Admin"]


def test_a_deeper_path_beats_an_inherited_one_even_to_narrow_it() -> None:
    assert held(ALICE, set(), vm_chain("narrow", 1)) == ROLES["Viewer"]


def test_a_users_own_entry_beats_their_groups_at_the_same_level() -> None:
    assert held(BOB, {DEVS}, vm_chain("a", 1)) == ROLES["Developer"]
    assert held(99, {DEVS}, vm_chain("a", 1)) == ROLES["Operator"]


def test_group_entries_propagate_from_a_host() -> None:
    assert held(99, {DEVS}, vm_chain("b", 1)) == ROLES["Viewer"]
    assert held(99, {DEVS}, vm_chain("b", 2)) == frozenset()


def test_no_access_takes_everything_away() -> None:
    assert held(99, {DEVS}, vm_chain("secret", 1)) == frozenset()


def test_pools_sit_between_host_and_vm() -> None:
    assert held(99, {OPS}, vm_chain("c", 3, 7)) == ROLES["Operator"]
    assert held(99, {OPS}, vm_chain("c", 3)) == frozenset()


def test_an_entry_that_does_not_propagate_stays_on_its_path() -> None:
    assert held(CAROL, set(), ("/", "/hosts/1")) == ROLES["Admin"]
    assert held(CAROL, set(), vm_chain("b", 1)) == frozenset()


def test_candidates_are_known_only_without_broader_entries() -> None:
    assert INDEX.vm_candidates(BOB, frozenset()) == {"a"}
    assert INDEX.vm_candidates(ALICE, frozenset()) is None
    assert INDEX.vm_candidates(99, frozenset({DEVS})) is None


def test_the_memo_never_changes_an_answer() -> None:
    rng = random.Random(3)
    paths = ["/", *(f"/hosts/{h}" for h in range(3)), *(f"/pools/{p}" for p in range(3)),
             *(f"/vms/v{v}" for v in range(30))]  # fmt: skip
    entries = {
        AclEntry(rng.choice([U, G]), rng.randint(1, 4), rng.choice(paths),
                 rng.choice(list(ROLES)), rng.random() < 0.8)
        for _ in range(120)
    }  # fmt: skip
    index = AclIndex(entries, ROLES)
    chains = [vm_chain(f"v{v}", rng.randrange(3), rng.choice([None, 0, 1, 2])) for v in range(30)]
    for user in range(1, 5):
        groups = frozenset(rng.sample(range(1, 5), 2))
        memo: dict[tuple[str, ...], frozenset[Privilege]] = {}
        for chain in chains:
            assert index.privileges(user, groups, chain, memo) == index.privileges(
                user, groups, chain
            ), chain
