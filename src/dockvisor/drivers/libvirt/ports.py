"""Host ports on 127.0.0.1 for the Docker forwards of VMs under user-mode networking."""

from __future__ import annotations

import os
import re
import socket

from dockvisor.errors import InvalidInput

__all__ = ["PORT_RANGE", "port_is_free", "port_range"]

# Host ports for Docker forwards are taken from this range (override: DOCKVISOR_PORT_RANGE).
PORT_RANGE = (42000, 42999)


def port_range() -> tuple[int, int]:
    """The range to take ports from: DOCKVISOR_PORT_RANGE ("LOW-HIGH") or 42000-42999."""
    text = os.environ.get("DOCKVISOR_PORT_RANGE", "").strip()
    if not text:
        return PORT_RANGE
    match = re.fullmatch(r"(\d+)-(\d+)", text)
    if not match or not 1024 <= int(match[1]) <= int(match[2]) <= 65535:
        raise InvalidInput(
            f"DOCKVISOR_PORT_RANGE={text!r} is not a port range like 42000-42999 (1024-65535)"
        )
    return int(match[1]), int(match[2])


def port_is_free(port: int) -> bool:
    """Whether QEMU could listen on 127.0.0.1:`port` now. QEMU binds its host-forwards
    with SO_REUSEADDR, so connections of a previous QEMU in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
