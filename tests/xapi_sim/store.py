"""The simulator's object database: records, references, generations for events.

Modelled on xapi's DB cache (ocaml/database): every write bumps a global
generation and stamps the row's `modified`; rows remember `created`; deleted rows
leave a tombstone so event.from can report `del` (xapi_event.ml collect_events).
Writing a reference field also touches the row it points at, because the
referenced row's derived set field (e.g. VM.VBDs) changes with it.
Keys starting with "_" are private simulator state, never put on the wire.
"""

from __future__ import annotations

import threading
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from .errors import XapiError, handle_invalid
from .schema import CLASSES, RELATIONS, blank_record
from .wire import NULL_REF, encode


@dataclass
class Stamp:
    cls: str
    created: int
    modified: int


@dataclass
class Tombstone:
    cls: str
    ref: str
    created: int
    deleted: int


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def new_uuid() -> str:
    return str(uuidlib.uuid4())


# child class -> [(reference field, parent class)], to touch parents on change.
_PARENTS: dict[str, list[tuple[str, str]]] = {}
for (_parent, _field), (_child, _fk) in RELATIONS.items():
    _PARENTS.setdefault(_child, []).append((_fk, _parent))


class Store:
    """All objects, under one re-entrant lock; `cond` wakes event.from waiters."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {c: {} for c in CLASSES}
        self.stamps: dict[str, Stamp] = {}
        self.tombstones: list[Tombstone] = []
        self.generation = 0
        self.closed = False

    # -- reads -----------------------------------------------------------------
    def exists(self, cls: str, ref: str) -> bool:
        return ref in self.objects[cls]

    def get(self, cls: str, ref: str) -> dict[str, Any]:
        """The live record (mutate only through update()); HANDLE_INVALID if absent."""
        record = self.objects[cls].get(ref)
        if record is None:
            raise handle_invalid(cls, ref)
        return record

    def class_of(self, ref: str) -> str | None:
        stamp = self.stamps.get(ref)
        return stamp.cls if stamp else None

    def all(self, cls: str) -> dict[str, dict[str, Any]]:
        return self.objects[cls]

    def by_uuid(self, cls: str, value: str) -> str:
        """ref of the object with that uuid; UUID_INVALID [class, uuid] as
        ocaml/xapi/exnHelper.ml maps Db_exn.Read_missing_uuid."""
        for ref, record in self.objects[cls].items():
            if record["uuid"] == value:
                return ref
        raise XapiError("UUID_INVALID", cls, value)

    def children(self, cls: str, ref: str, field: str) -> list[str]:
        child_cls, fk = RELATIONS[(cls, field)]
        return [r for r, rec in self.objects[child_cls].items() if rec.get(fk) == ref]

    def public_record(self, cls: str, ref: str) -> dict[str, Any]:
        """The record's public fields (values shared with the live record) with its
        derived sets filled in: what get_record shows, before wire encoding."""
        record = self.get(cls, ref)
        out = {k: v for k, v in record.items() if not k.startswith("_")}
        for field, kind in CLASSES[cls].items():
            if kind == "D":
                out[field] = self.children(cls, ref, field)
        return out

    def render(self, cls: str, ref: str) -> dict[str, Any]:
        """The record as get_record returns it on the wire."""
        return encode(self.public_record(cls, ref))

    # -- writes ----------------------------------------------------------------
    def _bump(self) -> int:
        self.generation += 1
        self.cond.notify_all()
        return self.generation

    def touch(self, cls: str, ref: str) -> None:
        """Record a modification (also what event.inject does to a row)."""
        if ref in self.objects[cls]:
            self.stamps[ref].modified = self._bump()

    def _touch_parents(self, cls: str, record: dict[str, Any], only: set[str] | None) -> None:
        for fk, parent_cls in _PARENTS.get(cls, []):
            if only is not None and fk not in only:
                continue
            target = record.get(fk, NULL_REF)
            if target != NULL_REF:
                self.touch(parent_cls, target)

    def create(self, cls: str, fields: dict[str, Any], ref: str | None = None) -> str:
        ref = ref or new_ref()
        record = blank_record(cls)
        record["uuid"] = new_uuid()
        record.update(fields)
        self.objects[cls][ref] = record
        gen = self._bump()
        self.stamps[ref] = Stamp(cls, gen, gen)
        self._touch_parents(cls, record, None)
        return ref

    def update(self, cls: str, ref: str, **fields: Any) -> None:
        record = self.get(cls, ref)
        links = {fk for fk, _ in _PARENTS.get(cls, [])} & fields.keys()
        if links:
            self._touch_parents(cls, record, links)
        record.update(fields)
        self.stamps[ref].modified = self._bump()
        if links:
            self._touch_parents(cls, record, links)

    def destroy(self, cls: str, ref: str) -> None:
        record = self.objects[cls].pop(ref, None)
        if record is None:
            return
        stamp = self.stamps.pop(ref)
        self.tombstones.append(Tombstone(cls, ref, stamp.created, self._bump()))
        self._touch_parents(cls, record, None)
