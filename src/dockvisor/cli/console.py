"""`dockvisor vm console NAME`: this terminal on a VM's serial console.

Through a server (--server): a console ticket, then the console's websocket, exactly as
a web page opens it (the server checks VM.Console and audits). On the hypervisor host:
the console straight from libvirt. The terminal goes raw and everything typed goes to
the guest; Ctrl-] leaves (the guest's shell goes on, and is there at the next attach).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import click

from dockvisor.cli.backends import RemoteBackend
from dockvisor.domain.model import ConsoleKind

__all__ = ["DETACH", "attach_terminal", "console"]

DETACH = b"\x1d"  # Ctrl-]


@click.command("console")
@click.argument("name")
@click.pass_context
def console(ctx: click.Context, name: str) -> None:
    """Attach this terminal to the VM's serial console (a root shell in the guest).

    Ctrl-] detaches. With --server it needs VM.Console on the VM.
    """
    root: Any = ctx.find_root().obj
    if root.server:
        backend = root.backend
        assert isinstance(backend, RemoteBackend)
        _over_websocket(backend, name)
    else:
        _over_socket(root.driver.open_console(name, ConsoleKind.SERIAL), name)


def _banner(name: str) -> str:
    return f"dockvisor: serial console of {name}; Ctrl-] detaches"


def _over_socket(sock: socket.socket, name: str) -> None:
    with sock:
        attach_terminal(sock.sendall, lambda: sock.recv(65536), _banner(name))


def _over_websocket(backend: RemoteBackend, name: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    api = backend.api
    vm_id = backend._id(name)
    ticket = api.request("POST", f"/vms/{vm_id}/console-tickets", json={"kind": "serial"})
    base = api.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    headers = {"Authorization": f"Bearer {api.token}"}
    with connect(f"{base}{ticket['url']}", additional_headers=headers, open_timeout=30) as ws:
        ended: list[str] = []

        def recv() -> bytes:
            try:
                data = ws.recv()
            except ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code != 1000:
                    ended.append(closed.rcvd.reason or f"closed ({closed.rcvd.code})")
                return b""
            return data if isinstance(data, bytes) else data.encode()

        def send(data: bytes) -> None:
            with suppress(ConnectionClosed):
                ws.send(data)

        attach_terminal(send, recv, _banner(name))
    if ended:
        raise click.ClickException(f"the console ended: {ended[0]}")


@contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # what was typed ahead is kept
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach_terminal(send: Callable[[bytes], Any], recv: Callable[[], bytes], banner: str) -> None:
    """Copy stdin to `send` (raw, when it is a terminal) and `recv` to stdout, until the
    console ends (`recv` gives b""), stdin ends, or Ctrl-] is typed. `banner` goes to
    stderr once the terminal is raw."""
    done = threading.Event()
    out = sys.stdout.buffer

    def pump_out() -> None:
        try:
            while not done.is_set() and (data := recv()):
                out.write(data)
                out.flush()
        except OSError:
            pass
        finally:
            done.set()

    fd = sys.stdin.fileno()
    reader = threading.Thread(target=pump_out, daemon=True)
    with _raw(fd):
        sys.stderr.write(f"{banner}\r\n")
        sys.stderr.flush()
        reader.start()
        while not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            if DETACH in data:
                send(data[: data.index(DETACH)])
                break
            send(data)
    done.set()
    print(file=sys.stderr)
