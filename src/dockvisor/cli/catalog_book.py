"""The CLI's own template catalogs (without --server): one JSON file in the user's
configuration directory, `~/.config/dockvisor/catalogs.json`."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from dockvisor.errors import AlreadyExists, NotFound
from dockvisor.services.catalogs import CatalogRecord

__all__ = ["FileCatalogBook", "default_book_path", "record_data"]


def default_book_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockvisor" / "catalogs.json"


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _record(data: dict[str, Any]) -> CatalogRecord:
    return CatalogRecord(
        name=data["name"],
        url=data["url"],
        public_key=data["public_key"],
        updated=_time(data.get("updated")),
        fetched=_time(data.get("fetched")),
        newest=dict(data.get("newest", {})),
    )


def record_data(record: CatalogRecord) -> dict[str, Any]:
    """A catalog as the file keeps it and `--json` prints it."""
    return {
        "name": record.name,
        "url": record.url,
        "public_key": record.public_key,
        "updated": record.updated.isoformat() if record.updated else None,
        "fetched": record.fetched.isoformat() if record.fetched else None,
        "newest": record.newest,
    }


class FileCatalogBook:
    """Catalogs in a JSON file, changed under a lock (two CLIs at once lose nothing)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_book_path()

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            books = self._read()
            before = json.dumps(books, sort_keys=True)
            yield books
            if json.dumps(books, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                listed = {"catalogs": [books[n] for n in sorted(books)]}
                tmp.write_text(json.dumps(listed, indent=2, sort_keys=True) + "\n")
                tmp.replace(self.path)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            return {c["name"]: c for c in json.loads(self.path.read_text())["catalogs"]}
        except FileNotFoundError:
            return {}

    def all(self) -> list[CatalogRecord]:
        return [_record(c) for _, c in sorted(self._read().items())]

    def get(self, name: str) -> CatalogRecord:
        found = self._read().get(name)
        if found is None:
            raise NotFound(f"no catalog named {name!r} (see `dockvisor template catalog list`)")
        return _record(found)

    def add(self, record: CatalogRecord) -> None:
        with self._locked() as books:
            if record.name in books:
                raise AlreadyExists(f"a catalog named {record.name!r} already exists")
            books[record.name] = record_data(record)

    def remove(self, name: str) -> None:
        with self._locked() as books:
            if books.pop(name, None) is None:
                raise NotFound(f"no catalog named {name!r}")

    def save(self, record: CatalogRecord) -> None:
        with self._locked() as books:
            if record.name in books:
                books[record.name] = record_data(record)
