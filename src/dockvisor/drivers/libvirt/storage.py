"""dockvisor's disks as volumes of one libvirt storage pool.

Going through libvirt's storage API (not the local filesystem) keeps the adapter
working for remote URIs: template files are uploaded as streams, overlays and copies are
made by libvirt on the hypervisor's side.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import libvirt

from dockvisor.drivers.base import Progress, no_progress
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.errors import InvalidInput, NotFound

__all__ = [
    "DEFAULT_POOL",
    "StoragePool",
    "unique_volume_name",
]

DEFAULT_POOL = "dockvisor"
_CHUNK = 4 * 1024 * 1024


def unique_volume_name(owner: str, suffix: str) -> str:
    """A volume name no earlier volume has: the owner's name, a random tag, a suffix."""
    return f"{owner}-{secrets.token_hex(4)}.{suffix}"


def _default_path(uri: str) -> str:
    if uri.startswith("qemu:///session"):
        return str(Path.home() / ".local/share/libvirt/images" / DEFAULT_POOL)
    return f"/var/lib/libvirt/images/{DEFAULT_POOL}"


class StoragePool:
    """The pool that holds every disk, kernel and initrd dockvisor makes."""

    def __init__(self, conn: libvirt.virConnect, uri: str, name: str = DEFAULT_POOL) -> None:
        self._conn = conn
        self._uri = uri
        self._local = urlsplit(uri).netloc == ""  # qemu:///system: this machine's files
        self.name = name
        self._pool: libvirt.virStoragePool | None = None

    @property
    def pool(self) -> libvirt.virStoragePool:
        """The pool, defined, built and started on first use."""
        if self._pool is None:
            with libvirt_errors(f"preparing storage pool {self.name}"):
                try:
                    pool = self._conn.storagePoolLookupByName(self.name)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                        raise
                    xml = (
                        f"<pool type='dir'><name>{self.name}</name><target>"
                        f"<path>{_default_path(self._uri)}</path></target></pool>"
                    )
                    pool = self._conn.storagePoolDefineXML(xml, 0)
                    pool.build(0)
                    pool.setAutostart(1)
                if not pool.isActive():
                    pool.create(0)
                self._pool = pool
        return self._pool

    def volume(self, name: str) -> libvirt.virStorageVol:
        with libvirt_errors(f"looking up volume {name}"):
            try:
                return self.pool.storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise NotFound(f"storage pool {self.name} has no volume {name}") from exc
                raise

    def volume_by_path(self, path: str) -> libvirt.virStorageVol | None:
        try:
            return self._conn.storageVolLookupByPath(path)
        except libvirt.libvirtError:
            return None

    def path_of(self, name: str) -> str:
        return str(self.volume(name).path())

    def capacity(self, name: str) -> int:
        return int(self.volume(name).info()[1])

    def format_of(self, name: str) -> str:
        fmt = ET.fromstring(self.volume(name).XMLDesc(0)).find("target/format")
        return fmt.get("type", "raw") if fmt is not None else "raw"

    def check_self_contained(self, name: str, what: str) -> str:
        """The volume's format as the pool probed it; InvalidInput unless it is raw or
        a qcow2 that names no other file (what QEMU would open for a VM's guest)."""
        xml = ET.fromstring(self.volume(name).XMLDesc(0))
        fmt = xml.find("target/format")
        found = fmt.get("type", "raw") if fmt is not None else "raw"
        if found not in ("raw", "qcow2"):
            raise InvalidInput(f"{what} is a {found} image: refused (use qcow2 or raw)")
        if xml.findtext("backingStore/path"):
            raise InvalidInput(f"{what} refers to a backing file: refused")
        return found

    def free(self) -> int:
        """Bytes the pool has free now, less what the VMs' disks may still grow into:
        they are thin (qcow2), so a series of creates and growths, each fitting what is
        free, could otherwise promise more than the pool holds."""
        with libvirt_errors(f"reading the free space of storage pool {self.name}"):
            with suppress(libvirt.libvirtError):  # refused while a volume is written
                self.pool.refresh(0)
            available = int(self.pool.info()[3])
            promised = 0
            for vol in self.pool.listAllVolumes(0):
                with suppress(libvirt.libvirtError):  # deleted meanwhile
                    if not vol.name().startswith("template-"):
                        _, capacity, allocation = vol.info()
                        promised += max(0, int(capacity) - int(allocation))
            return max(0, available - promised)

    def grow(self, path: str, size: int) -> None:
        """Make the volume at `path` `size` bytes long (its new end reads as zeros)."""
        vol = self.volume_by_path(path)
        if vol is None:
            raise NotFound(f"no storage volume holds {path}")
        with libvirt_errors(f"growing {path}"):
            vol.resize(size, 0)

    def create_overlay(
        self, name: str, backing_path: str, backing_format: str, capacity: int
    ) -> str:
        """A new qcow2 volume whose unwritten blocks read from `backing_path`; its path."""
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            "<target><format type='qcow2'/><compat>1.1</compat></target>"
            f"<backingStore><path>{backing_path}</path><format type='{backing_format}'/>"
            "</backingStore></volume>"
        )
        with libvirt_errors(f"creating disk {name}"):
            return str(self.pool.createXML(xml, 0).path())

    def create_empty(self, name: str, capacity: int, fmt: str = "qcow2") -> str:
        compat = "<compat>1.1</compat>" if fmt == "qcow2" else ""
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<target><format type='{fmt}'/>{compat}</target></volume>"
        )
        with libvirt_errors(f"creating disk {name}"):
            return str(self.pool.createXML(xml, 0).path())

    def create_copy(self, name: str, source_path: str, capacity: int) -> str:
        """An independent qcow2 copy of the volume at `source_path` (its backing chain
        flattened into it)."""
        source = self.volume_by_path(source_path)
        if source is None:
            raise NotFound(f"no storage volume holds {source_path}")
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            "<target><format type='qcow2'/><compat>1.1</compat></target></volume>"
        )
        with libvirt_errors(f"copying disk into {name}"):
            return str(self.pool.createXMLFrom(xml, source, 0).path())

    def upload(self, name: str, local_file: str, *, progress: Progress = no_progress,
               send_content: bool = True) -> str:  # fmt: skip
        """A new volume holding the bytes of `local_file` (a file on this machine)."""
        label = Path(local_file).name
        with open(local_file, "rb") as f:
            return self._upload(name, os.path.getsize(local_file), f, label, progress,
                                send_content)  # fmt: skip

    def upload_bytes(self, name: str, data: bytes, *, send_content: bool = True) -> str:
        """A new raw volume holding `data` (a config drive, say)."""
        return self._upload(name, len(data), io.BytesIO(data), name, no_progress, send_content)

    def _upload(self, name: str, size: int, source: BinaryIO, label: str, progress: Progress,
                send_content: bool) -> str:  # fmt: skip
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='raw'/></target></volume>"
        )
        with libvirt_errors(f"uploading {label} as {name}"):
            vol = self.pool.createXML(xml, 0)
            try:
                if send_content:
                    stream = self._conn.newStream(0)
                    vol.upload(stream, 0, size, 0)
                    sent = 0
                    while chunk := source.read(_CHUNK):
                        stream.send(chunk)
                        sent += len(chunk)
                        progress(f"uploading {label}", sent / max(size, 1))
                    stream.finish()
                # Only to update sizes: libvirt refuses a refresh while another volume of
                # the pool is being written (a concurrent create), and the volume is known.
                with suppress(libvirt.libvirtError):
                    self.pool.refresh(0)
                return str(vol.path())
            except BaseException:
                self.delete(name)
                raise

    def download(self, path: str, dest: Path, *, progress: Progress = no_progress) -> None:
        """Copy the bytes of the volume at `path` into the local file `dest`."""
        with libvirt_errors(f"downloading {path}"), open(dest, "wb") as out:
            for chunk in self._read(path, progress):
                out.write(chunk)

    def digest(self, path: str) -> str:
        """The SHA-256 of the volume at `path` (read directly when this machine holds it)."""
        if self._local and os.access(path, os.R_OK):
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        h = hashlib.sha256()
        with libvirt_errors(f"reading {path}"):
            for chunk in self._read(path, no_progress):
                h.update(chunk)
        return h.hexdigest()

    def _read(self, path: str, progress: Progress) -> Iterator[bytes]:
        vol = self.volume_by_path(path)
        if vol is None:
            raise NotFound(f"no storage volume holds {path}")
        size = int(vol.info()[2]) or 1  # allocation: what the file holds
        stream = self._conn.newStream(0)
        vol.download(stream, 0, 0, 0)
        got = 0
        while chunk := stream.recv(_CHUNK):
            if isinstance(chunk, int):  # -2: would block (not on a blocking stream)
                continue
            yield chunk
            got += len(chunk)
            progress(f"reading {Path(path).name}", min(got / size, 1.0))
        stream.finish()

    def add_config_drive(self, vm: str, drive: bytes | None, made: list[str], *,
                         send_content: bool = True) -> str | None:  # fmt: skip
        """Store VM `vm`'s config drive as a volume of its own (listed in `made`); its
        path, or None without a drive."""
        if drive is None:
            return None
        volume = unique_volume_name(vm, "cidata.iso")
        path = self.upload_bytes(volume, drive, send_content=send_content)
        made.append(volume)
        return path

    def delete(self, name: str) -> bool:
        """Delete the volume if it exists; True if it did."""
        try:
            vol = self.pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            return False
        with libvirt_errors(f"deleting volume {name}"):
            vol.delete(0)
        return True

    def names(self) -> list[str]:
        with libvirt_errors("listing volumes"):
            return [v.name() for v in self.pool.listAllVolumes(0)]
