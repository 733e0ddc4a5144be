"""Disk image files on this machine, as every adapter family reads them before upload."""

from __future__ import annotations

import os

__all__ = ["local_disk_format", "local_disk_size"]


def local_disk_format(path: str) -> str:
    """ "qcow2" or "raw", from the magic of a disk image file on this machine."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def local_disk_size(path: str) -> int:
    """The virtual size of a disk image file on this machine."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head[:4] == b"QFI\xfb":
        return int.from_bytes(head[24:32], "big")
    return os.path.getsize(path)
