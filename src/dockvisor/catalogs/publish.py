"""Publish a template into a catalog directory, which any static web server can serve.

The files go under `images/NAME/VERSION/ARCH/`: `disk.qcow2` (a qcow2 with compressed
clusters, which QEMU reads as is), `vmlinuz` and `initrd.img` if given. Then
`streams/v1/images.json` and `streams/v1/index.json` are rewritten with the new version
added to what was there, each with its signature (`.sig`), all renamed into place at the
end. One publish at a time per directory (a lock on it); a publish that fails removes
the files it made and leaves the catalog as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockvisor.domain import catalog
from dockvisor.domain.catalog import CatalogFile, CatalogTemplate
from dockvisor.domain.model import TemplateSizes
from dockvisor.domain.naming import validate_template_name
from dockvisor.drivers.disk_images import local_disk_size
from dockvisor.errors import CatalogError, InvalidInput, Unsupported
from dockvisor.paths import create_private_file

__all__ = ["load_or_create_signing_key", "publish_template", "write_streams"]

Progress = Callable[[str, float], None]

_FILE_NAMES = {"disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img"}
_QEMU_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def load_or_create_signing_key(path: Path) -> tuple[bytes, str]:
    """The publisher's ed25519 key at `path` (PEM, PKCS#8, as `openssl genpkey -algorithm
    ed25519` writes it), made there (mode 0600) if missing: (the 32-byte private key,
    the public key as catalogs are configured with it). A key file that others can read
    is refused."""
    if not path.exists():
        new = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        create_private_file(path, new.decode())  # False: made meanwhile, read that one
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise InvalidInput(
            f"signing key {path} can be read by others (mode {mode:o}): chmod 600 it"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"signing key {path} is not an unencrypted PEM ed25519 private key")
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw, catalog.public_key_text(public)


def publish_template(
    directory: Path,
    *,
    name: str,
    version: str | None = None,
    description: str = "",
    disk: Path,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
    docker_port: int | None = None,
    docker_version: str | None = None,
    features: Sequence[str] = (),
    sizes: TemplateSizes = TemplateSizes(),  # noqa: B008 - frozen, so a safe default
    signing_key: Path,
    arch: str = "x86_64",
    progress: Progress | None = None,
) -> CatalogTemplate:
    """Add template `name` at `version` (default: the UTC time as YYYYMMDD_HHMMSS) to
    the catalog in `directory`, signed with the key at `signing_key` (made if missing).
    InvalidInput for a bad value, a version already published, or a catalog there that
    another key signed; on any failure the catalog is left as it was."""
    report = progress or (lambda step, fraction: None)
    now = datetime.now(UTC).replace(microsecond=0)
    version = version or now.strftime("%Y%m%d_%H%M%S")
    _check_input(
        name,
        version,
        arch,
        description,
        cmdline,
        docker_port,
        docker_version,
        features,
        [disk, kernel, initrd],
    )
    if initrd is not None and kernel is None:
        raise InvalidInput("an initrd needs a kernel")
    min_disk = local_disk_size(str(disk))
    if problem := catalog.size_problem(sizes, min_disk):
        raise InvalidInput(f"template {name!r}: {problem}")
    private, public = load_or_create_signing_key(signing_key)
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        existing, updated = _read_catalog(directory, signing_key, public)
        if any((t.name, t.version, t.arch) == (name, version, arch) for t in existing):
            raise InvalidInput(
                f"template {name!r} version {version!r} ({arch}) is already in the catalog "
                f"{directory}: publish another version"
            )
        place = directory / "images" / name / version / arch
        if place.exists():
            raise InvalidInput(f"{place} exists but is in no catalog version: remove it first")
        try:
            files = _place_files(place, directory, disk, kernel, initrd, report)
            template = CatalogTemplate(
                name=name,
                version=version,
                arch=arch,
                description=description,
                files=files,
                cmdline=cmdline,
                docker_port=docker_port,
                docker_version=docker_version,
                features=tuple(features),
                sizes=sizes,
                min_disk=min_disk,
                published=now,
            )
            report("signing the catalog", 0.98)
            write_streams(directory, [*existing, template], private, max(now, updated or now))
        except BaseException:
            _remove_place(place, directory)
            raise
    report("published", 1.0)
    return template


def _check_input(
    name: str,
    version: str,
    arch: str,
    description: str,
    cmdline: str | None,
    docker_port: int | None,
    docker_version: str | None,
    features: Sequence[str],
    files: Sequence[Path | None],
) -> None:
    validate_template_name(name)
    checks = [
        (version, catalog.VERSION, "version: 1-64 letters, digits, '.', '_' and '-'"),
        (arch, catalog.ARCH, "architecture: lower-case letters, digits and '_'"),
        (description, catalog.TEXT, "description: one line of at most 4096 characters"),
        (cmdline, catalog.TEXT, "kernel command line: one line"),
        (docker_version, catalog.DOCKER_VERSION, "Docker version: no spaces"),
        *((f, catalog.FEATURE, "feature: lower-case letters, digits and '-'") for f in features),
    ]
    for value, pattern, what in checks:
        if value is not None and not pattern.fullmatch(value):
            raise InvalidInput(f"{value!r} is not a valid {what}")
    if docker_port is not None and not 0 < docker_port < 65536:
        raise InvalidInput(f"Docker port {docker_port} is not a port (1-65535)")
    for path in files:
        if path is not None and not path.is_file():
            raise InvalidInput(f"{path} is not a file")


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_catalog(
    directory: Path, signing_key: Path, public: str
) -> tuple[list[CatalogTemplate], datetime | None]:
    """The templates already in `directory` and when it was updated, checked against
    this publisher's key."""
    index_file = directory / catalog.INDEX_PATH
    if not index_file.exists():
        return [], None
    name = str(directory)
    index = index_file.read_bytes()
    _check_signature(directory, catalog.INDEX_PATH, signing_key, public, index)
    found = catalog.parse_index(name, index)
    products = (directory / found.products_path).read_bytes()
    _check_signature(directory, found.products_path, signing_key, public, products)
    templates = catalog.parse_products(
        name, products, path=found.products_path, updated=found.updated
    )
    return templates, found.updated


def _check_signature(
    directory: Path, path: str, signing_key: Path, public: str, data: bytes
) -> None:
    signature = directory / f"{path}.sig"
    try:
        catalog.verify(str(directory), path, public, data, signature.read_bytes())
    except (CatalogError, FileNotFoundError):
        raise InvalidInput(
            f"the catalog in {directory} is not signed by the key {signing_key} ({public}): "
            f"{path} or its signature differs; publish with the key that signed it, or "
            "into another directory"
        ) from None


def _place_files(
    place: Path,
    directory: Path,
    disk: Path,
    kernel: Path | None,
    initrd: Path | None,
    report: Progress,
) -> dict[str, CatalogFile]:
    place.mkdir(parents=True)
    _compress(disk, place / _FILE_NAMES["disk"], report)
    report("copying the kernel and initrd", 0.9)
    sources = {"kernel": kernel, "initrd": initrd}
    for kind, source in sources.items():
        if source is not None:
            shutil.copyfile(source, place / _FILE_NAMES[kind])
    report("computing checksums", 0.95)
    files = {}
    for kind in ("disk", *(k for k, s in sources.items() if s is not None)):
        path = place / _FILE_NAMES[kind]
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        relative = path.relative_to(directory).as_posix()
        files[kind] = CatalogFile(kind, relative, digest, path.stat().st_size)
    return files


def _compress(source: Path, target: Path, report: Progress) -> None:
    """qemu-img convert to a qcow2 with compressed clusters, reporting its progress."""
    with open(source, "rb") as f:
        source_format = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    command = ["qemu-img", "convert", "-p", "-c", "-f", source_format, "-O", "qcow2"]
    try:
        process = subprocess.Popen(
            [*command, str(source), str(target)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError:
        raise Unsupported("publishing needs qemu-img (Debian package qemu-utils)") from None
    assert process.stdout is not None
    said = b""
    with process:
        while chunk := os.read(process.stdout.fileno(), 4096):
            for match in _QEMU_PROGRESS.finditer(chunk):
                report("compressing the disk", 0.85 * float(match.group(1)) / 100)
            said = (said + _QEMU_PROGRESS.sub(b"", chunk).strip())[-2000:]
    if process.returncode != 0:
        text = said.decode(errors="replace").strip()
        raise InvalidInput(f"qemu-img could not compress the disk {source}: {text}")


def write_streams(
    directory: Path, templates: list[CatalogTemplate], private: bytes, updated: datetime
) -> None:
    """Write the catalog's products file for `templates` (whose files are in place)
    and its index, with their signatures by `private` (32 bytes): all aside first, then
    renamed into place, the products file before the index that names it."""
    products = catalog.render_products(templates, updated)
    index = catalog.render_index(catalog.PRODUCTS_PATH, {t.product for t in templates}, updated)
    contents = {
        catalog.PRODUCTS_PATH: products,
        f"{catalog.PRODUCTS_PATH}.sig": catalog.sign(private, products),
        catalog.INDEX_PATH: index,
        f"{catalog.INDEX_PATH}.sig": catalog.sign(private, index),
    }
    aside = {directory / path: directory / f"{path}.new" for path in contents}
    try:
        for (final, temporary), data in zip(aside.items(), contents.values(), strict=True):
            final.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for final, temporary in aside.items():
            os.replace(temporary, final)
    finally:
        for temporary in aside.values():
            temporary.unlink(missing_ok=True)


def _remove_place(place: Path, directory: Path) -> None:
    """Remove a failed publish's files and the directories it left empty."""
    shutil.rmtree(place, ignore_errors=True)
    for parent in place.parents:
        if parent == directory:
            break
        with suppress(OSError):
            parent.rmdir()  # only if empty
