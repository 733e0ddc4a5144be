"""Template catalogs: add one, search it, pull a template from it onto hosts, update a
pulled template to the catalog's newest version.

A catalog is a static simplestreams site signed with its publisher's ed25519 key
(domain/catalog.py, catalogs/). Everything a catalog gives is checked against the key
the admin gave when adding it before anything is registered. Where catalogs are kept is
the caller's: a file for the CLI on its own (cli/catalog_book.py), the database for the
server (`DbCatalogBook`).
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import select

from dockvisor.catalogs.client import CatalogClient
from dockvisor.domain.catalog import (
    CatalogTemplate,
    parse_public_key,
    parse_reference,
    version_key,
)
from dockvisor.domain.model import Template, TemplateOrigin, TemplateSpec
from dockvisor.domain.naming import validate_template_name
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.drivers.disk_images import check_self_contained
from dockvisor.errors import (
    AlreadyExists,
    CatalogError,
    DockvisorError,
    InvalidInput,
    NotFound,
)
from dockvisor.paths import cache_dir
from dockvisor.services import warm
from dockvisor.services.engines import EngineAccess
from dockvisor.store.db import Database
from dockvisor.store.models import CatalogRow, utc

__all__ = [
    "CatalogBook",
    "CatalogRecord",
    "DbCatalogBook",
    "add_catalog",
    "fetch_catalog",
    "newer_version",
    "pull_template",
    "search_catalogs",
    "update_template",
]


@dataclass(frozen=True)
class CatalogRecord:
    """A catalog as added, and what its last fetch said."""

    name: str
    url: str
    public_key: str
    updated: datetime | None = None  # its index's "updated" at the last fetch
    fetched: datetime | None = None  # when that was
    newest: dict[str, str] = field(default_factory=dict)  # template -> newest version


class CatalogBook(Protocol):
    """Where the catalogs are kept."""

    def all(self) -> list[CatalogRecord]: ...
    def get(self, name: str) -> CatalogRecord: ...  # NotFound
    def add(self, record: CatalogRecord) -> None: ...  # AlreadyExists
    def remove(self, name: str) -> None: ...  # NotFound
    def save(self, record: CatalogRecord) -> None: ...  # an existing one's fetch results


def _client(record: CatalogRecord) -> CatalogClient:
    return CatalogClient(record.name, record.url, record.public_key)


def fetch_catalog(book: CatalogBook, record: CatalogRecord) -> list[CatalogTemplate]:
    """What the catalog offers now, its signatures checked; refused if its index is older
    than one already seen (someone serving an old, signed catalog to hold back updates).
    The book keeps what the fetch said."""
    templates, fetched = _fetch(record)
    book.save(fetched)
    return templates


def _fetch(record: CatalogRecord) -> tuple[list[CatalogTemplate], CatalogRecord]:
    """The catalog's templates, and the record with what this fetch said."""
    templates, updated = _client(record).fetch()
    if record.updated is not None and updated < record.updated:
        raise CatalogError(
            f"catalog {record.name!r} ({record.url}) gives an index of {updated.isoformat()}, "
            f"older than the one of {record.updated.isoformat()} already seen: refused"
        )
    newest: dict[str, str] = {}
    for t in sorted(templates, key=lambda t: version_key(t.version)):
        newest[t.name] = t.version
    return templates, replace(record, updated=updated, fetched=datetime.now(UTC), newest=newest)


def add_catalog(book: CatalogBook, *, name: str, url: str, public_key: str) -> CatalogRecord:
    """Add a catalog once it answered with an index signed by `public_key`."""
    validate_template_name(name)
    parse_public_key(public_key)
    record = CatalogRecord(name=name, url=url.rstrip("/"), public_key=public_key.strip())
    with suppress(NotFound):
        book.get(name)
        raise AlreadyExists(f"a catalog named {name!r} already exists")
    _, fetched = _fetch(record)  # a typo in the URL or key is said now, not at a pull
    book.add(fetched)
    return fetched


def search_catalogs(
    book: CatalogBook, text: str = ""
) -> tuple[list[tuple[str, CatalogTemplate]], list[str]]:
    """The templates of every catalog whose name or description contains `text`, and
    one line for each catalog that could not be read (the others are still searched)."""
    found: list[tuple[str, CatalogTemplate]] = []
    problems: list[str] = []
    needle = text.lower()
    for record in book.all():
        try:
            templates = fetch_catalog(book, record)
        except DockvisorError as exc:
            problems.append(str(exc))
            continue
        for t in templates:
            if needle in t.name.lower() or needle in t.description.lower():
                found.append((record.name, t))
    found.sort(key=lambda pair: (pair[0], pair[1].name, pair[1].version))
    return found, problems


def newer_version(book: CatalogBook, template: Template) -> str | None:
    """The newer version of a pulled template that its catalog offered at its last fetch."""
    if template.origin is None:
        return None
    try:
        record = book.get(template.origin.catalog)
    except NotFound:
        return None
    newest = record.newest.get(template.origin.product)
    if newest and version_key(newest) > version_key(template.origin.version):
        return newest
    return None


def _pick(record: CatalogRecord, templates: list[CatalogTemplate], name: str,
          version: str | None) -> CatalogTemplate:  # fmt: skip
    versions = sorted((t for t in templates if t.name == name),
                      key=lambda t: version_key(t.version))  # fmt: skip
    if not versions:
        offered = ", ".join(sorted({t.name for t in templates})) or "nothing"
        raise NotFound(f"catalog {record.name!r} has no template {name!r} (it has: {offered})")
    if version is None:
        return versions[-1]
    for t in versions:
        if t.version == version:
            return t
    known = ", ".join(t.version for t in versions)
    raise NotFound(f"catalog {record.name!r} has no version {version!r} of {name!r} ({known})")


def downloads_dir(catalog: str) -> Path:
    """Where downloads from `catalog` go (and interrupted ones wait to be resumed)."""
    return cache_dir() / "catalog-downloads" / catalog


def pull_template(
    drivers: Sequence[HypervisorDriver],
    book: CatalogBook,
    reference: str,
    *,
    as_name: str | None = None,
    replacing: bool = False,
    progress: Progress = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[Template]:
    """Download CATALOG:NAME[:VERSION] (resuming an interrupted download), check its size,
    checksum and signature, and register it on each of `drivers` as `as_name` (default:
    its name in the catalog). With `replacing`, a template of that name pulled from the
    same catalog template is replaced (VMs made from it keep their disks). If any host
    refuses it, the hosts that took it forget it again: all or nothing."""
    catalog, name, version = parse_reference(reference)
    local = as_name or name
    validate_template_name(local)
    record = book.get(catalog)
    progress(f"reading catalog {catalog}", 0.0)
    entry = _pick(record, fetch_catalog(book, record), name, version)
    origin = TemplateOrigin(catalog, entry.name, entry.version, entry.files["disk"].sha256)
    for driver in drivers:
        _check_name(driver, local, origin, replacing)
    into = downloads_dir(catalog)
    into.mkdir(parents=True, exist_ok=True)
    # One pull at a time from a catalog (in this or another process): two pulls of one
    # file would share its partial download, and one could unlink what the other
    # registers.
    with _download_lock(into.parent / f"{catalog}.lock", progress):
        return _pull(drivers, record, entry, into, reference, local, origin, replacing,
                     progress, cancelled)  # fmt: skip


@contextmanager
def _download_lock(path: Path, progress: Progress) -> Iterator[None]:
    """An exclusive lock on `path`, waited for with progress reports (through which a
    task's cancellation reaches the wait)."""
    with open(path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                progress("waiting for another pull from this catalog", 0.02)
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pull(
    drivers: Sequence[HypervisorDriver],
    record: CatalogRecord,
    entry: CatalogTemplate,
    into: Path,
    reference: str,
    local: str,
    origin: TemplateOrigin,
    replacing: bool,
    progress: Progress,
    cancelled: Callable[[], bool],
) -> list[Template]:
    catalog = record.name
    total = sum(f.size for f in entry.files.values()) or 1
    done = 0
    paths: dict[str, Path] = {}
    for kind, file in sorted(entry.files.items()):
        base = done

        def step(what: str, fraction: float, base: int = base, size: int = file.size) -> None:
            progress(what, 0.05 + 0.75 * (base + fraction * size) / total)

        paths[kind] = _client(record).download(file, into, progress=step, cancelled=cancelled)
        done += file.size
    registered: list[tuple[HypervisorDriver, Template]] = []
    try:  # downloaded files that verified: kept above only to resume the others
        try:
            check_self_contained(str(paths["disk"]), f"the disk of {reference}")
        except InvalidInput as exc:
            raise CatalogError(f"catalog {catalog!r}: {exc}") from None
        spec = TemplateSpec(
            name=local,
            disk=str(paths["disk"]),
            kernel=str(paths["kernel"]) if "kernel" in paths else None,
            initrd=str(paths["initrd"]) if "initrd" in paths else None,
            cmdline=entry.cmdline or "console=ttyS0 root=/dev/vda1 rw",
            description=entry.description,
            docker_port=entry.docker_port,
            sizes=entry.sizes,
            origin=origin,
        )
        for i, driver in enumerate(drivers):
            progress(f"registering on {driver.uri}", 0.8 + 0.2 * i / len(drivers))
            registered.append((driver, driver.register_template(spec)))
    except BaseException:
        for driver, template in registered:
            if not replacing:
                with suppress(DockvisorError):
                    driver.remove_template(template.name)
        raise
    finally:
        for path in paths.values():  # registered copies live in each host's storage
            path.unlink(missing_ok=True)
    progress("pulled", 1.0)
    return [t for _, t in registered]


def _check_name(driver: HypervisorDriver, name: str, origin: TemplateOrigin,
                replacing: bool) -> None:  # fmt: skip
    """AlreadyExists if `name` is taken on the host, unless it is being replaced by a
    newer version of the same catalog template."""
    try:
        current = driver.get_template(name)
    except NotFound:
        return
    same = current.origin is not None and (current.origin.catalog, current.origin.product) == (
        origin.catalog,
        origin.product,
    )
    if not (replacing and same):
        raise AlreadyExists(
            f"host {driver.uri} already has a template named {name!r}; pull it under "
            "another name (--as NAME)" + (", or `template update` it" if same else "")
        )


def update_template(
    driver: HypervisorDriver,
    book: CatalogBook,
    name: str,
    *,
    progress: Progress = no_progress,
    cancelled: Callable[[], bool] = lambda: False,
    engines: EngineAccess | None = None,
) -> tuple[Template, bool]:
    """Replace a pulled template by its catalog's newest version (VMs made from the old
    one keep their disks; the host's warm spares of it are remade of the new one).
    Returns the template and whether it changed."""
    current = driver.get_template(name)
    if current.origin is None:
        raise InvalidInput(f"template {name!r} was not pulled from a catalog: nothing to update")
    record = book.get(current.origin.catalog)
    newest = _pick(record, fetch_catalog(book, record), current.origin.product, None)
    if version_key(newest.version) <= version_key(current.origin.version):
        progress(f"{name} is up to date ({current.origin.version})", 1.0)
        return current, False
    reference = f"{record.name}:{newest.name}:{newest.version}"
    (template,) = pull_template([driver], book, reference, as_name=name, replacing=True,
                                progress=progress, cancelled=cancelled)  # fmt: skip
    if current.spares_kept:

        def step(what: str, fraction: float) -> None:
            progress(f"spares: {what}", fraction)

        warm.keep_warm_after_change(driver, name, current.spares_kept, engines=engines,
                                    progress=step)  # fmt: skip
        template = driver.get_template(name)
    return template, True


class DbCatalogBook:
    """The server's catalogs, in its database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _record(row: CatalogRow) -> CatalogRecord:
        return CatalogRecord(
            name=row.name,
            url=row.url,
            public_key=row.public_key,
            updated=utc(row.updated) if row.updated else None,
            fetched=utc(row.fetched) if row.fetched else None,
            newest=json.loads(row.newest or "{}"),
        )

    def all(self) -> list[CatalogRecord]:
        with self.db.read() as session:
            rows = session.scalars(select(CatalogRow).order_by(CatalogRow.name))
            return [self._record(r) for r in rows]

    def get(self, name: str) -> CatalogRecord:
        with self.db.read() as session:
            row = session.scalar(select(CatalogRow).where(CatalogRow.name == name))
            if row is None:
                raise NotFound(f"no catalog named {name!r} (see `template catalog list`)")
            return self._record(row)

    def add(self, record: CatalogRecord) -> None:
        with self.db.session() as session:
            if session.scalar(select(CatalogRow).where(CatalogRow.name == record.name)):
                raise AlreadyExists(f"a catalog named {record.name!r} already exists")
            session.add(
                CatalogRow(name=record.name, url=record.url, public_key=record.public_key,
                           updated=record.updated, fetched=record.fetched,
                           newest=json.dumps(record.newest, sort_keys=True))
            )  # fmt: skip

    def remove(self, name: str) -> None:
        with self.db.session() as session:
            row = session.scalar(select(CatalogRow).where(CatalogRow.name == name))
            if row is None:
                raise NotFound(f"no catalog named {name!r}")
            session.delete(row)

    def save(self, record: CatalogRecord) -> None:
        with self.db.session() as session:
            row = session.scalar(
                select(CatalogRow).where(CatalogRow.name == record.name).with_for_update()
            )
            if row is None:
                return
            seen = utc(row.updated) if row.updated else None
            if seen is not None and record.updated is not None and record.updated < seen:
                return  # another fetch saw a newer index meanwhile: keep the newest seen
            row.updated, row.fetched = record.updated, record.fetched
            row.newest = json.dumps(record.newest, sort_keys=True)
