"""A minimal writer of the `newc` cpio format the Linux kernel unpacks as an initramfs."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

__all__ = ["write_initramfs"]


def _header(ino: int, mode: int, nlink: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def write_initramfs(tree: Path, dest: Path) -> None:
    """Write every file, directory and symlink under `tree` to `dest` as gzip'd newc cpio.

    Entries are sorted and owned by root with a zero mtime, so the same tree gives
    the same bytes.
    """
    out = bytearray()
    ino = 1
    paths = sorted(tree.rglob("*"), key=lambda p: p.relative_to(tree).as_posix())
    for path in paths:
        name = path.relative_to(tree).as_posix().encode()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            data = os.readlink(path).encode()
        elif stat.S_ISREG(st.st_mode):
            data = path.read_bytes()
        elif stat.S_ISDIR(st.st_mode):
            data = b""
        else:
            continue
        nlink = 2 if stat.S_ISDIR(st.st_mode) else 1
        head = _header(ino, st.st_mode, nlink, len(data), name)
        out += head + _pad(len(head)) + data + _pad(len(data))
        ino += 1
    trailer = _header(0, 0, 1, 0, b"TRAILER!!!")
    out += trailer + _pad(len(trailer))
    dest.write_bytes(gzip.compress(bytes(out), compresslevel=6, mtime=0))
