"""Locks that every dockvisor process on this machine shares, whatever its user: a
thread lock within a process, and an flock on one file under /run/lock (opened
read-only, so that any user may lock it) between processes. They guard what must not
happen twice at once on one host: claiming a warm spare, and starting QEMU with a
Docker forward on a port found free (two starts could find the same one)."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dockvisor.drivers.libvirt.guest_network import default_run_dir

__all__ = ["host_lock"]

_threads: dict[str, threading.Lock] = {}
_guard = threading.Lock()


@contextmanager
def host_lock(name: str) -> Iterator[None]:
    """Hold the machine-wide lock `name` (a plain word) for the block."""
    path = Path(f"/run/lock/dockvisor-{name}.lock")
    if not path.parent.is_dir():
        path = default_run_dir().parent / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
    with _guard:
        lock = _threads.setdefault(name, threading.Lock())
    with lock:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # (releases the flock)
