"""Why a user holds what they hold on an object, in words. Pure: no I/O.

`AclIndex.deciding` (domain/acl.py) says which entries decide; this module says, for
every entry along the object's chain that names the user or one of their groups, why it
decides or why it does not, and which deciding entry gives each privilege held.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dockvisor.domain.acl import AclEntry, SubjectKind
from dockvisor.domain.privileges import Privilege

__all__ = ["JudgedEntry", "judge_entries", "privilege_origins"]


@dataclass(frozen=True)
class JudgedEntry:
    """An entry on the chain of an object and its part in what the user holds there."""

    entry: AclEntry
    depth: int  # its path's place in the chain: 0 is `/`, the last is the object
    decides: bool
    why: str


def judge_entries(
    chain: Sequence[str], entries: Sequence[AclEntry], deciding: Sequence[AclEntry]
) -> list[JudgedEntry]:
    """`entries` (those naming the user or their groups, on paths of `chain`) judged
    against `deciding` (what AclIndex.deciding answered), root first."""
    last = len(chain) - 1
    decided_at = max((chain.index(e.path) for e in deciding if e.path in chain), default=-1)
    own_at = {
        chain.index(e.path)
        for e in entries
        if e.path in chain
        and e.subject_kind is SubjectKind.USER
        and (e.propagate or chain.index(e.path) == last)
    }
    judged = []
    for entry in entries:
        if entry.path not in chain:
            continue
        depth = chain.index(entry.path)
        if entry in deciding:
            where = "on the object itself" if depth == last else f"inherited from {entry.path}"
            judged.append(JudgedEntry(entry, depth, True, f"decides ({where})"))
            continue
        if depth < last and not entry.propagate:
            why = f"does not propagate below {entry.path}"
        elif depth < decided_at:
            why = f"replaced by the entries on {chain[decided_at]}, deeper in the chain"
        elif entry.subject_kind is SubjectKind.GROUP and depth in own_at:
            why = f"the user's own entries on {entry.path} come before their groups'"
        else:
            why = "does not apply"
        judged.append(JudgedEntry(entry, depth, False, why))
    return sorted(judged, key=lambda j: (j.depth, j.entry.subject_kind, j.entry.role))


def privilege_origins(
    held: frozenset[Privilege],
    deciding: Sequence[AclEntry],
    roles: Mapping[str, frozenset[Privilege]],
) -> dict[Privilege, list[AclEntry]]:
    """For each privilege held, the deciding entries whose role includes it."""
    return {
        privilege: [e for e in deciding if privilege in roles.get(e.role, frozenset())]
        for privilege in sorted(held)
    }
