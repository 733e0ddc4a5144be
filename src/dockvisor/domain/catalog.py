"""Template catalogs: their records, their files' format and their signatures. No I/O.

A catalog is a static web site in the simplestreams format that Incus/LXD image servers
use: `streams/v1/index.json` ("index:1.0") names the products file,
`streams/v1/images.json` ("products:1.0", datatype "image-downloads"), whose products
are "NAME:ARCH" with their versions and each version's items (files with "ftype",
"path", "sha256", "size"). What only dockvisor reads sits under a "dockvisor" key of each
version, so a plain simplestreams reader still parses the catalog. Each of the two files
has a detached ed25519 signature next to it (`<file>.sig`: the base64 of the 64-byte
signature, one line), made with the publisher's key; a catalog is used only with that
key. The products file's "updated" equals its index entry's "updated", so an old
products file cannot be served with a newer index.

Versions are compared piece by piece: runs of digits as numbers, other runs as text
(a number before text). For serials shaped like publish's default, the UTC time as
YYYYMMDD_HHMMSS (20261130_134501), that is their order as strings, which is time order.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dockvisor.domain.model import TemplateSizes
from dockvisor.errors import CatalogError, InvalidInput

__all__ = [
    "INDEX_PATH",
    "PRODUCTS_PATH",
    "CatalogFile",
    "CatalogIndex",
    "CatalogTemplate",
    "newest",
    "parse_index",
    "parse_products",
    "parse_public_key",
    "parse_reference",
    "public_key_text",
    "render_index",
    "render_products",
    "sign",
    "size_problem",
    "verify",
    "version_key",
]

INDEX_PATH = "streams/v1/index.json"
PRODUCTS_PATH = "streams/v1/images.json"
CONTENT_ID = "images"  # the index entry's id, as on Incus image servers
DATATYPE = "image-downloads"
# A file's kind -> (its item's name, its "ftype"): Incus's ftype for a VM's qcow2 disk,
# simplestreams' for a boot kernel and initrd.
ITEMS = {
    "disk": ("disk.qcow2", "disk-kvm.img"),
    "kernel": ("boot-kernel", "boot-kernel"),
    "initrd": ("boot-initrd", "boot-initrd"),
}
KEY_PREFIX = "ed25519:"

NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # catalogs and templates
VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ARCH = re.compile(r"[a-z0-9][a-z0-9_]{0,15}")
FEATURE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
DOCKER_VERSION = re.compile(r"[\x21-\x7e]{1,128}")  # printable, no spaces
SHA256 = re.compile(r"[0-9a-f]{64}")
# A path inside the catalog: relative, segments that do not start with a dot (no "..",
# no hidden files), no scheme, no backslash, nothing a URL would read differently.
PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*(?:/[A-Za-z0-9][A-Za-z0-9._+~-]*)*")
TEXT = re.compile(r"[^\x00-\x1f\x7f]{0,4096}")  # one line: descriptions, kernel cmdlines
PUBLISHED = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CatalogFile:
    kind: str  # "disk", "kernel" or "initrd"
    path: str  # relative to the catalog's root
    sha256: str
    size: int


@dataclass(frozen=True)
class CatalogTemplate:
    """One version of one template, for one architecture."""

    name: str
    version: str
    arch: str
    description: str
    files: dict[str, CatalogFile]  # by kind; always a "disk"
    cmdline: str | None
    docker_port: int | None
    docker_version: str | None
    features: tuple[str, ...]  # what the guest has: "config-drive", "qemu-agent"...
    sizes: TemplateSizes
    min_disk: int  # the disk image's virtual size
    published: datetime

    @property
    def product(self) -> str:
        return f"{self.name}:{self.arch}"


@dataclass(frozen=True)
class CatalogIndex:
    products_path: str
    products: tuple[str, ...]
    updated: datetime


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """The version ordering rule (see the module's docstring) as a sort key."""
    return tuple(
        (0, int(piece)) if piece.isdigit() else (1, piece)
        for piece in re.findall(r"\d+|\D+", version)
    )


def newest(
    templates: Iterable[CatalogTemplate], name: str, *, arch: str | None = None
) -> CatalogTemplate | None:
    """The highest version of template `name` (of `arch` if given); None if it has none."""
    found = [t for t in templates if t.name == name and arch in (None, t.arch)]
    return max(found, key=lambda t: (version_key(t.version), t.published), default=None)


def parse_reference(reference: str) -> tuple[str, str, str | None]:
    """ "CATALOG:NAME[:VERSION]" -> (catalog, name, version or None)."""
    parts = reference.split(":")
    if (
        len(parts) in (2, 3)
        and NAME.fullmatch(parts[0])
        and NAME.fullmatch(parts[1])
        and (len(parts) == 2 or VERSION.fullmatch(parts[2]))
    ):
        return parts[0], parts[1], parts[2] if len(parts) == 3 else None
    raise InvalidInput(
        f"template reference {reference!r} is not valid: write CATALOG:NAME or "
        "CATALOG:NAME:VERSION (for example acme:docker-debian:20261130_134501)"
    )


def size_problem(sizes: TemplateSizes, min_disk: int) -> str | None:
    """What is wrong with a template's sizes, or None."""
    if sizes.min_vcpus < 1 or sizes.min_memory < 0 or min_disk < 1:
        return "the minimum vCPUs and disk must be positive and the minimum memory not negative"
    for default, minimum, what in (
        (sizes.default_vcpus, sizes.min_vcpus, "vCPUs"),
        (sizes.default_memory, sizes.min_memory, "memory"),
        (sizes.default_disk, min_disk, "disk"),
    ):
        if default is not None and default < minimum:
            return f"the default {what} ({default}) is below the minimum ({minimum})"
    return None


# Keys and signatures


def public_key_text(raw: bytes) -> str:
    """A public key as catalogs are configured with it: "ed25519:<base64 of 32 bytes>"."""
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> bytes:
    """The 32 raw bytes of a public key written as public_key_text writes it."""
    raw = _base64(text[len(KEY_PREFIX) :]) if text.startswith(KEY_PREFIX) else b""
    if len(raw) != 32:
        raise InvalidInput(
            f"catalog key {text!r} is not valid: it is 'ed25519:' followed by the base64 "
            "of 32 bytes, as `dockvisor template publish` prints it"
        )
    return raw


def _base64(text: str | bytes) -> bytes:
    """Decoded strict base64; empty if it is not."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return b""


def sign(private_key: bytes, data: bytes) -> bytes:
    """The content of `data`'s signature file: the base64 of its ed25519 signature by
    the 32-byte private key, one line."""
    signature = Ed25519PrivateKey.from_private_bytes(private_key).sign(data)
    return base64.b64encode(signature) + b"\n"


def verify(catalog: str, file: str, public_key: str, data: bytes, signature: bytes) -> None:
    """Check that `signature` (the content of `file`'s signature file) signs `data` with
    `public_key`; CatalogError naming the catalog and the file if not."""
    raw = _base64(signature.strip())
    if len(raw) != 64:
        raise CatalogError(
            f"catalog {catalog!r}: the signature of {file} is not an ed25519 signature "
            "(the base64 of 64 bytes)"
        )
    try:
        Ed25519PublicKey.from_public_bytes(parse_public_key(public_key)).verify(raw, data)
    except InvalidSignature:
        raise CatalogError(
            f"catalog {catalog!r}: the signature of {file} does not match its key "
            f"{public_key}: the file was changed, or signed by another key"
        ) from None


# Rendering


def _updated(when: datetime) -> str:
    return email.utils.format_datetime(when.astimezone(UTC).replace(microsecond=0))


def _json(value: object) -> bytes:
    return (json.dumps(value, sort_keys=True, indent=1) + "\n").encode()


def render_products(templates: Sequence[CatalogTemplate], updated: datetime) -> bytes:
    """The products file for these templates (deterministic: sorted keys)."""
    products: dict[str, dict[str, Any]] = {}
    for t in sorted(templates, key=lambda t: version_key(t.version)):
        product = products.setdefault(
            t.product,
            {"aliases": t.name, "arch": t.arch, "os": "dockvisor", "release": t.name},
        )
        product["release_title"] = t.description  # the newest version's
        product.setdefault("versions", {})[t.version] = _version_entry(t)
    document = {
        "content_id": CONTENT_ID,
        "datatype": DATATYPE,
        "format": "products:1.0",
        "products": products,
        "updated": _updated(updated),
    }
    return _json(document)


def _version_entry(t: CatalogTemplate) -> dict[str, Any]:
    items = {
        ITEMS[f.kind][0]: {
            "ftype": ITEMS[f.kind][1],
            "path": f.path,
            "sha256": f.sha256,
            "size": f.size,
        }
        for f in t.files.values()
    }
    s = t.sizes
    dockvisor = {
        "cmdline": t.cmdline,
        "description": t.description,
        "docker_port": t.docker_port,
        "docker_version": t.docker_version,
        "features": list(t.features),
        "min_disk": t.min_disk,
        "published": t.published.astimezone(UTC).strftime(PUBLISHED),
        "sizes": {
            "default_disk": s.default_disk,
            "default_memory": s.default_memory,
            "default_vcpus": s.default_vcpus,
            "min_memory": s.min_memory,
            "min_vcpus": s.min_vcpus,
        },
    }
    return {"items": items, "dockvisor": dockvisor}


def render_index(products_path: str, products: Iterable[str], updated: datetime) -> bytes:
    """The index naming the products file and its products."""
    entry = {
        "datatype": DATATYPE,
        "format": "products:1.0",
        "path": products_path,
        "products": sorted(products),
        "updated": _updated(updated),
    }
    document = {"format": "index:1.0", "index": {CONTENT_ID: entry}, "updated": _updated(updated)}
    return _json(document)


# Parsing


class _Parse:
    """Typed reads from one catalog file; each failure names the catalog and the file."""

    def __init__(self, catalog: str, file: str) -> None:
        self.catalog = catalog
        self.file = file

    def error(self, what: str) -> CatalogError:
        return CatalogError(f"catalog {self.catalog!r}: {self.file} is not valid: {what}")

    def document(self, data: bytes) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise self.error(f"it is not JSON ({e})") from None
        return self.object(value, "the file")

    def object(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(f"{where} is not a JSON object")
        return value

    def text(
        self, obj: dict[str, Any], key: str, where: str, pattern: re.Pattern[str] = TEXT
    ) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise self.error(f"{key!r} of {where} is missing or not a valid string")
        return value

    def optional_text(
        self, obj: dict[str, Any], key: str, where: str, pattern: re.Pattern[str] = TEXT
    ) -> str | None:
        return None if obj.get(key) is None else self.text(obj, key, where, pattern)

    def integer(self, obj: dict[str, Any], key: str, where: str, minimum: int = 1) -> int:
        value = obj.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(f"{key!r} of {where} is not an integer of at least {minimum}")
        return value

    def optional_integer(
        self, obj: dict[str, Any], key: str, where: str, minimum: int = 1
    ) -> int | None:
        return None if obj.get(key) is None else self.integer(obj, key, where, minimum)

    def equal(self, obj: dict[str, Any], key: str, expected: str, where: str) -> None:
        if obj.get(key) != expected:
            raise self.error(f"{key!r} of {where} is {obj.get(key)!r}, not {expected!r}")

    def when(
        self, obj: dict[str, Any], key: str, where: str, parse: Callable[[str], datetime]
    ) -> datetime:
        value = self.text(obj, key, where)
        try:
            return parse(value).astimezone(UTC)
        except (ValueError, TypeError, IndexError):
            raise self.error(f"{key!r} of {where} is not a valid time: {value!r}") from None


def _rfc2822(value: str) -> datetime:
    when = email.utils.parsedate_to_datetime(value)
    if when.tzinfo is None:
        raise ValueError(value)
    return when


def _iso(value: str) -> datetime:
    return datetime.strptime(value, PUBLISHED).replace(tzinfo=UTC)


def parse_index(catalog: str, data: bytes) -> CatalogIndex:
    """Where the catalog's products file is, which products it has, when it was updated."""
    p = _Parse(catalog, INDEX_PATH)
    doc = p.document(data)
    p.equal(doc, "format", "index:1.0", "the file")
    entry = p.object(p.object(doc.get("index"), "'index'").get(CONTENT_ID), f"index {CONTENT_ID!r}")
    where = f"index entry {CONTENT_ID!r}"
    p.equal(entry, "format", "products:1.0", where)
    p.equal(entry, "datatype", DATATYPE, where)
    products = entry.get("products")
    if not isinstance(products, list) or not all(isinstance(x, str) for x in products):
        raise p.error(f"'products' of {where} is not a list of names")
    return CatalogIndex(
        products_path=p.text(entry, "path", where, PATH),
        products=tuple(products),
        updated=p.when(entry, "updated", where, _rfc2822),
    )


def parse_products(
    catalog: str, data: bytes, *, path: str = PRODUCTS_PATH, updated: datetime | None = None
) -> list[CatalogTemplate]:
    """The templates of a products file; with `updated` (the index's), the file must
    say the same time."""
    p = _Parse(catalog, path)
    doc = p.document(data)
    p.equal(doc, "format", "products:1.0", "the file")
    p.equal(doc, "datatype", DATATYPE, "the file")
    when = p.when(doc, "updated", "the file", _rfc2822)
    if updated is not None and when != updated:
        raise p.error(
            f"it was updated {when:%Y-%m-%d %H:%M:%S}, the index says "
            f"{updated:%Y-%m-%d %H:%M:%S}: a mix of old and new catalog files"
        )
    templates = []
    for product, entry in p.object(doc.get("products"), "'products'").items():
        templates += _parse_product(p, product, p.object(entry, f"product {product!r}"))
    return templates


def _parse_product(p: _Parse, product: str, entry: dict[str, Any]) -> list[CatalogTemplate]:
    name, _, arch = product.partition(":")
    if not NAME.fullmatch(name) or not ARCH.fullmatch(arch):
        raise p.error(f"product {product!r} is not named TEMPLATE:ARCH")
    p.equal(entry, "arch", arch, f"product {product!r}")
    versions = p.object(entry.get("versions"), f"'versions' of product {product!r}")
    templates = []
    for version, body in versions.items():
        where = f"product {product!r} version {version!r}"
        if not VERSION.fullmatch(version):
            raise p.error(f"{where}: the version is not a valid name")
        body = p.object(body, where)
        files = _parse_items(p, p.object(body.get("items"), f"'items' of {where}"), where)
        meta = p.object(body.get("dockvisor"), f"'dockvisor' of {where}")
        templates.append(_parse_template(p, name, version, arch, files, meta, where))
    return templates


def _parse_items(p: _Parse, items: dict[str, Any], where: str) -> dict[str, CatalogFile]:
    kinds = {ftype: kind for kind, (_, ftype) in ITEMS.items()}
    files: dict[str, CatalogFile] = {}
    for item_name, value in items.items():
        item = p.object(value, f"item {item_name!r} of {where}")
        kind = kinds.get(str(item.get("ftype")))
        if kind is None:
            continue  # an item for other readers
        at = f"item {item_name!r} of {where}"
        if kind in files:
            raise p.error(f"{where} has two {kind} items")
        files[kind] = CatalogFile(
            kind=kind,
            path=p.text(item, "path", at, PATH),
            sha256=p.text(item, "sha256", at, SHA256),
            size=p.integer(item, "size", at),
        )
    if "disk" not in files:
        raise p.error(f"{where} has no disk item (ftype {ITEMS['disk'][1]!r})")
    return files


def _parse_template(
    p: _Parse,
    name: str,
    version: str,
    arch: str,
    files: dict[str, CatalogFile],
    meta: dict[str, Any],
    where: str,
) -> CatalogTemplate:
    at = f"'dockvisor' of {where}"
    raw_sizes = p.object(meta.get("sizes"), f"'sizes' of {at}")
    sizes = TemplateSizes(
        min_vcpus=p.integer(raw_sizes, "min_vcpus", at),
        min_memory=p.integer(raw_sizes, "min_memory", at, minimum=0),
        default_vcpus=p.optional_integer(raw_sizes, "default_vcpus", at),
        default_memory=p.optional_integer(raw_sizes, "default_memory", at),
        default_disk=p.optional_integer(raw_sizes, "default_disk", at),
    )
    min_disk = p.integer(meta, "min_disk", at)
    if problem := size_problem(sizes, min_disk):
        raise p.error(f"{at}: {problem}")
    features = meta.get("features")
    if not isinstance(features, list) or not all(
        isinstance(f, str) and FEATURE.fullmatch(f) for f in features
    ):
        raise p.error(f"'features' of {at} is not a list of feature names")
    docker_port = p.optional_integer(meta, "docker_port", at)
    if docker_port is not None and docker_port > 65535:
        raise p.error(f"'docker_port' of {at} is not a port")
    return CatalogTemplate(
        name=name,
        version=version,
        arch=arch,
        description=p.text(meta, "description", at),
        files=files,
        cmdline=p.optional_text(meta, "cmdline", at),
        docker_port=docker_port,
        docker_version=p.optional_text(meta, "docker_version", at, DOCKER_VERSION),
        features=tuple(features),
        sizes=sizes,
        min_disk=min_disk,
        published=p.when(meta, "published", at, _iso),
    )
