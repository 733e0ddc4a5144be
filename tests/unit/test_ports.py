"""Where Docker forwards are allowed to listen, and when a port counts as free."""

from __future__ import annotations

import socket

import pytest

from dockvisor.drivers.libvirt.ports import PORT_RANGE, port_is_free, port_range
from dockvisor.errors import InvalidInput


def test_range_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKVISOR_PORT_RANGE", raising=False)
    assert port_range() == PORT_RANGE
    monkeypatch.setenv("DOCKVISOR_PORT_RANGE", "50000-50010")
    assert port_range() == (50000, 50010)
    for bad in ("80-90", "50010-50000", "lots"):
        monkeypatch.setenv("DOCKVISOR_PORT_RANGE", bad)
        with pytest.raises(InvalidInput, match="DOCKVISOR_PORT_RANGE"):
            port_range()


def test_a_listening_port_is_taken_and_a_closed_one_is_free() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)
    assert port_is_free(port)
