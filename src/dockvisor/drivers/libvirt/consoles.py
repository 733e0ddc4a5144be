"""A running QEMU VM's consoles, each handed out as one end of a connected socket.

- The screen: the domain has `<graphics type='vnc'>` listening nowhere
  (`<listen type='none'/>`: no TCP port, no socket file, nothing a guest or a user of the
  host can reach). `virDomainOpenGraphicsFD` has QEMU accept one end of a new socket pair
  as a VNC client, its authentication skipped (the caller has decided who may look), and
  gives us the other end: RFB flows through it untouched.
- The serial port: `virDomainOpenConsole` into a non-blocking libvirt stream, on a
  connection of its own opened after libvirt's event loop (events.py) runs. `_SerialPump`
  moves bytes between that stream and one end of a socket pair from callbacks on that
  loop's one thread: an idle console holds no thread. The other end is the caller's.
  The console is opened with VIR_DOMAIN_CONSOLE_FORCE: a new session takes it over from
  an older one (which reads end-of-file), as `virsh console --force` does, so a session
  left half-open by a vanished client never locks it.

Closing the caller's socket ends the session at once: the pump sees end-of-file on its
own end, aborts the stream and closes its connection; QEMU drops a VNC client whose
socket closes. What the guest wrote to its serial port is also kept in a log file on
QEMU hosts of this machine (`log_tail`).
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from contextlib import suppress
from pathlib import Path

import libvirt

from dockvisor.domain.model import ConsoleKind
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.drivers.libvirt.events import start_event_loop
from dockvisor.errors import BadPowerState, Unsupported

__all__ = ["log_tail", "open_console", "open_graphics", "open_serial"]

_CHUNK = 64 * 1024
# Bytes held for one direction before reading from its source pauses (back-pressure:
# a client that does not read slows the guest's output down instead of filling memory).
_HIGH_WATER = 256 * 1024

_S_READ = libvirt.VIR_STREAM_EVENT_READABLE
_S_WRITE = libvirt.VIR_STREAM_EVENT_WRITABLE
_S_END = libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP
_H_READ = libvirt.VIR_EVENT_HANDLE_READABLE
_H_WRITE = libvirt.VIR_EVENT_HANDLE_WRITABLE
_H_END = libvirt.VIR_EVENT_HANDLE_ERROR | libvirt.VIR_EVENT_HANDLE_HANGUP


def log_tail(path: str | None, lines: int) -> str:
    """The last `lines` lines of a serial console's log file ("" without one)."""
    if not path:
        return ""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def open_console(dom: libvirt.virDomain, uri: str, uuid: str, kind: ConsoleKind) -> socket.socket:
    """The console of `kind` of the domain `dom` (whose connection is `uri`)."""
    if kind is ConsoleKind.VNC:
        return open_graphics(dom)
    return open_serial(uri, uuid, dom.name())


def _require_running(dom: libvirt.virDomain, what: str) -> None:
    with libvirt_errors(f"reading the state of {dom.name()}"):
        active = dom.isActive()
    if not active:
        raise BadPowerState(f"VM {dom.name()!r} is not running: it has no {what} to open")


def open_graphics(dom: libvirt.virDomain) -> socket.socket:
    """The VM's screen: a socket on which QEMU speaks RFB (security type None)."""
    _require_running(dom, "screen")
    with libvirt_errors(f"reading the devices of {dom.name()}"):
        devices = ET.fromstring(dom.XMLDesc(0)).find("devices")
    if devices is None or devices.find("graphics[@type='vnc']") is None:
        raise Unsupported(
            f"VM {dom.name()!r} has no screen: VMs defined before dockvisor gave them one "
            "have none (a clone, or a VM made anew, has one)"
        )
    with libvirt_errors(f"opening the screen of {dom.name()}"):
        fd = dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
    return socket.socket(fileno=fd)


def open_serial(uri: str, uuid: str, name: str) -> socket.socket:
    """The VM's first serial port, taken over from any other session that holds it."""
    start_event_loop()  # before the connection: only then are its streams' events seen
    with libvirt_errors(f"connecting to {uri} for the serial console of {name}"):
        conn = libvirt.open(uri)
    ours, theirs = socket.socketpair()
    try:
        with libvirt_errors(f"opening the serial console of {name}"):
            dom = conn.lookupByUUIDString(uuid)
            _require_running(dom, "serial console")
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
            except libvirt.libvirtError:
                with suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        _SerialPump(conn, stream, ours).start()
    except BaseException:
        ours.close()
        theirs.close()
        with suppress(libvirt.libvirtError):
            conn.close()
        raise
    return theirs


class _SerialPump:
    """Bytes between a console stream and a socket, moved by callbacks on libvirt's event
    loop thread (and only there, once started), without blocking it."""

    def __init__(
        self, conn: libvirt.virConnect, stream: libvirt.virStream, sock: socket.socket
    ) -> None:
        sock.setblocking(False)
        self._conn = conn
        self._stream = stream
        self._sock = sock
        self._to_sock = bytearray()  # from the guest, not yet written to the socket
        self._to_guest = bytearray()  # from the socket, not yet sent to the guest
        self._stream_events = _S_READ | _S_END
        self._sock_events = _H_READ | _H_END
        self._watch = -1
        self._ended = False

    def start(self) -> None:
        try:
            self._watch = libvirt.virEventAddHandle(
                self._sock.fileno(), self._sock_events, self._on_sock, None
            )
        except libvirt.libvirtError as exc:
            raise Unsupported("libvirt's event loop does not run: no console stream") from exc
        try:
            self._stream.eventAddCallback(self._stream_events, self._on_stream, None)
        except libvirt.libvirtError:
            libvirt.virEventRemoveHandle(self._watch)
            raise

    # -- callbacks, on libvirt's event loop thread ----------------------------------

    def _on_stream(self, _stream: libvirt.virStream, events: int, _opaque: object) -> None:
        try:
            if events & _S_READ and not self._read_stream():
                self._flush_sock()
                self._end()
                return
            if events & _S_WRITE:
                self._flush_guest()
            if events & _S_END and not events & _S_READ:
                self._end()
                return
            self._flush_sock()
            self._update()
        except (libvirt.libvirtError, OSError):
            self._end()

    def _on_sock(self, _watch: int, _fd: int, events: int, _opaque: object) -> None:
        try:
            if events & _H_READ and not self._read_sock():
                self._end()  # the caller closed its end: the session is over
                return
            if events & _H_WRITE:
                self._flush_sock()
            if events & _H_END and not events & _H_READ:
                self._end()
                return
            self._flush_guest()
            self._update()
        except (libvirt.libvirtError, OSError):
            self._end()

    def _read_stream(self) -> bool:
        """Take what the guest wrote; False at the stream's end."""
        while len(self._to_sock) < _HIGH_WATER:
            data = self._stream.recv(_CHUNK)
            if data == -2:  # nothing more for now
                return True
            if not data:
                return False
            self._to_sock += data
        return True

    def _read_sock(self) -> bool:
        """Take what the caller wrote; False at the socket's end."""
        while len(self._to_guest) < _HIGH_WATER:
            try:
                data = self._sock.recv(_CHUNK)
            except BlockingIOError:
                return True
            if not data:
                return False
            self._to_guest += data
        return True

    def _flush_sock(self) -> None:
        while self._to_sock:
            try:
                sent = self._sock.send(self._to_sock)
            except BlockingIOError:
                return
            del self._to_sock[:sent]

    def _flush_guest(self) -> None:
        while self._to_guest:
            sent = self._stream.send(bytes(self._to_guest[:_CHUNK]))
            if sent == -2:
                return
            del self._to_guest[:sent]

    def _update(self) -> None:
        """Watch for what can move now: read a side only while its bytes have room."""
        if self._ended:
            return
        stream = _S_END | (_S_READ if len(self._to_sock) < _HIGH_WATER else 0)
        stream |= _S_WRITE if self._to_guest else 0
        sock = _H_END | (_H_READ if len(self._to_guest) < _HIGH_WATER else 0)
        sock |= _H_WRITE if self._to_sock else 0
        if stream != self._stream_events:
            self._stream.eventUpdateCallback(stream)
            self._stream_events = stream
        if sock != self._sock_events:
            libvirt.virEventUpdateHandle(self._watch, sock)
            self._sock_events = sock

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        with suppress(libvirt.libvirtError):
            libvirt.virEventRemoveHandle(self._watch)
        with suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()
        with suppress(libvirt.libvirtError):
            self._stream.abort()
        self._sock.close()  # the caller's end reads end-of-file
        with suppress(libvirt.libvirtError):
            self._conn.close()
