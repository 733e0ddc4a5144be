"""Disk image files on this machine, as every adapter family reads them before upload."""

from __future__ import annotations

import json
import os
import subprocess

from dockvisor.errors import InvalidInput

__all__ = ["check_self_contained", "local_disk_format", "local_disk_size"]

_QCOW2 = b"QFI\xfb"


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


def check_self_contained(path: str, what: str = "disk image") -> str:
    """The format ("raw" or "qcow2") of the disk image at `path`, as QEMU and libvirt
    would probe it; InvalidInput for any other format (QED, VMDK, VHD... can name other
    files for their data) and for a qcow2 that names a backing file or an external data
    file. QEMU would open such a file on the host when a VM uses the image and give the
    guest its content (/etc/shadow, a host disk)."""
    name = os.path.basename(path)
    try:
        proc = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", path],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        info = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):
        info = None
    if not isinstance(info, dict):
        raise InvalidInput(f"{what} {name} could not be read as a disk image")
    fmt = info.get("format")
    if fmt not in ("raw", "qcow2"):
        raise InvalidInput(f"{what} {name} is a {fmt} image: refused (use qcow2 or raw)")
    data = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidInput(
            f"{what} {name} refers to a backing file: refused (a template's disk must hold "
            "all its data; flatten it with qemu-img convert)"
        )
    if data.get("data-file"):
        raise InvalidInput(f"{what} {name} keeps its data in an external file: refused")
    return str(fmt)
