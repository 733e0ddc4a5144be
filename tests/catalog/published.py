"""A small signed catalog for tests: tiny templates (blank qcow2 disks) published with
the real publisher into a directory that a CatalogServer serves on 127.0.0.1."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from dockvisor.catalogs.publish import load_or_create_signing_key, publish_template, write_streams
from dockvisor.domain.catalog import CatalogTemplate
from dockvisor.domain.model import TemplateSizes
from dockvisor.domain.sizes import GiB, MiB
from tests.catalog.server import CatalogServer

__all__ = ["Catalog", "catalog_site"]


@dataclass
class Catalog:
    directory: Path
    key_file: Path
    public_key: str
    server: CatalogServer
    first: CatalogTemplate | None = None

    def publish(self, version: str, *, name: str = "tiny") -> CatalogTemplate:
        disk = self.directory.parent / f"{name}-{version}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "96M"], check=True)
        return publish_template(
            self.directory, name=name, version=version, description=f"{name} for tests",
            disk=disk, docker_port=None, sizes=TemplateSizes(min_memory=256 * MiB,
                                                              default_disk=1 * GiB),
            signing_key=self.key_file,
        )  # fmt: skip

    def swap_disk(self, template: CatalogTemplate, image: Path) -> CatalogTemplate:
        """Put `image` in place of the template's disk and sign the catalog again: what
        a publisher (trusted by its key) who ships a hostile image would serve."""
        disk = template.files["disk"]
        target = self.directory / disk.path
        target.write_bytes(image.read_bytes())
        data = target.read_bytes()
        swapped = replace(disk, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        changed = replace(template, files={**template.files, "disk": swapped})
        private, _ = load_or_create_signing_key(self.key_file)
        write_streams(self.directory, [changed], private, datetime.now(UTC))
        return changed


@contextmanager
def catalog_site(root: Path) -> Iterator[Catalog]:
    """A catalog offering `tiny` 1.0, served while the context lasts."""
    directory = root / "catalog"
    key_file = root / "signing.key"
    _, public = load_or_create_signing_key(key_file)
    with CatalogServer(directory) as server:
        found = Catalog(directory, key_file, public, server)
        found.first = found.publish("1.0")
        yield found
