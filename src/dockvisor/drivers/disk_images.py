"""Disk image files on this machine, as every adapter family reads them before upload."""

from __future__ import annotations

import os

from dockvisor.errors import InvalidInput

__all__ = ["check_self_contained", "local_disk_format", "local_disk_size"]

_QCOW2 = b"QFI\xfb"
_EXTERNAL_DATA_FILE = 1 << 2  # qcow2 v3 incompatible feature bit (docs/interop/qcow2.txt)


def local_disk_format(path: str) -> str:
    """ "qcow2" or "raw", from the magic of a disk image file on this machine."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == _QCOW2 else "raw"


def local_disk_size(path: str) -> int:
    """The virtual size of a disk image file on this machine."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head[:4] == _QCOW2:
        return int.from_bytes(head[24:32], "big")
    return os.path.getsize(path)


def check_self_contained(path: str, what: str = "disk image") -> None:
    """InvalidInput if the qcow2 image at `path` names another file for its data: a
    backing file or an external data file. QEMU would open that file on the host when
    a VM uses the image, and give the guest its content (/etc/shadow, a host disk)."""
    with open(path, "rb") as f:
        head = f.read(80)
    if head[:4] != _QCOW2:
        return
    version = int.from_bytes(head[4:8], "big")
    backing_offset = int.from_bytes(head[8:16], "big")
    if backing_offset:
        raise InvalidInput(
            f"{what} {os.path.basename(path)} refers to a backing file: refused (a template's "
            "disk must hold all its data; flatten it with qemu-img convert)"
        )
    if version >= 3 and int.from_bytes(head[72:80], "big") & _EXTERNAL_DATA_FILE:
        raise InvalidInput(
            f"{what} {os.path.basename(path)} keeps its data in an external file: refused"
        )
