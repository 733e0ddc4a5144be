"""The one path between a guest's network card and QEMU's user-mode network (slirp), and
the rule it enforces: no frame from a guest reaches slirp addressed to something slirp
would turn into the host itself.

slirp answers a guest's connection the way the host's own programs connect: an address
outside 10.0.2.0/24 is connected to as it is (so 127.0.0.1 is the host's loopback), the
gateway 10.0.2.2 is the host's 127.0.0.1 and 10.0.2.3 its name server (the rest of
10.0.2.0/24 is slirp's own, of no use to a guest). QEMU (7.2, and later ones) does not
pass libslirp's `disable_host_loopback` on, so the VM's card is not connected to slirp
but to this process, and slirp to it too, each by a unix socket; frames from the guest
go on only if:

- ARP, or
- IPv4 to 255.255.255.255, or to 10.0.2.2 (slirp's own DHCP server), UDP port 67 (DHCP);
- IPv4 to 10.0.2.3, TCP or UDP port 53: DNS, answered by the host's name server (the
  one host service a guest reaches, on that port only);
- IPv4 to 10.0.2.2 from the guest's forwarded Docker port, TCP with ACK set: the guest's
  side of a connection slirp forwarded in from the host (slirp opens a connection to
  the host only for a segment with SYN alone);
- IPv4 to any other address except 0.0.0.0/8 (Linux connects 0.0.0.0 to the host),
  127.0.0.0/8 (the host's loopback), 169.254.0.0/16 (link-local: the host's neighbours
  and cloud metadata services, which answer the host, not its guests), 224.0.0.0/3
  (multicast and reserved) and the rest of 10.0.2.0/24.

Everything else (IPv6, VLAN-tagged frames, other ethertypes, fragments whose ports cannot
be seen where ports decide) is dropped. Frames from slirp to the guest pass unchanged.

Measured before this existed: a container reached a server on the host's 127.0.0.1 at
10.0.2.2, and root in the guest reached it at 127.0.0.1 routed out of eth0 (with
`route_localnet`). passt (`--no-map-gw`) was tried instead of slirp: root in the guest
reached 127.0.0.1 the same way, and Debian 12's passt (0.0~git20230309) stalled every
download into the guest after about 10 MB, which slirp behind this guard did not (64 MB
in 12 s under emulation).

The process: dockvisor runs this file with the Python that runs dockvisor, as root,
before QEMU starts. It listens on two unix sockets only QEMU's user may connect to (the
card's and slirp's), says "ready" on stdout and goes to the background. It takes one
connection on each (QEMU's), removes its socket and pid files, drops to nobody, and
copies frames until either side closes; then it exits. If QEMU does not connect both
(the start failed), it exits after --accept-timeout seconds. Standard library only: it
runs as `python -I frame_guard.py`, without importing dockvisor.
"""

from __future__ import annotations

import argparse
import os
import pwd
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["frame_allowed", "main"]

_ARP = 0x0806
_IPV4 = 0x0800
_TCP, _UDP = 6, 17
_ACK, _SYN = 0x10, 0x02
_SLIRP_NET = (10, 0, 2)
_GATEWAY, _DNS = 2, 3  # last byte of 10.0.2.2 and 10.0.2.3
_LENGTH = 4  # QEMU's stream netdev frames each packet with a 32-bit length
_CHUNK = 256 * 1024


def frame_allowed(frame: bytes | memoryview, forwarded_port: int | None = None) -> bool:
    """Whether an Ethernet frame from a guest may go on to slirp (the module's rule).
    `forwarded_port`: the guest port slirp forwards the host's Docker port to."""
    if len(frame) < 14:
        return False
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == _ARP:
        return True
    if ethertype != _IPV4 or len(frame) < 34 or frame[14] >> 4 != 4 or frame[14] & 15 < 5:
        return False
    dst = bytes(frame[30:34])
    if dst[0] in (0, 127) or dst[0] >= 224 or dst[:2] == b"\xa9\xfe":
        return dst == b"\xff\xff\xff\xff" and _port(frame, _UDP) == 67
    if tuple(dst[:3]) != _SLIRP_NET:
        return True
    if dst[3] == _DNS:
        return _port(frame, _TCP) == 53 or _port(frame, _UDP) == 53
    if dst[3] == _GATEWAY:
        if _port(frame, _UDP) == 67:
            return True
        flags = _tcp_flags(frame)
        return (
            forwarded_port is not None
            and flags is not None
            and flags & _ACK != 0
            and _port(frame, _TCP, source=True) == forwarded_port
        )
    return False


def _l4(frame: bytes | memoryview, protocol: int, size: int) -> int | None:
    """Where the TCP or UDP header of an IPv4 frame starts, if the frame is of that
    protocol, is not a later fragment, and holds the header's first `size` bytes."""
    ihl = (frame[14] & 15) * 4
    fragment_offset = int.from_bytes(frame[20:22], "big") & 0x1FFF
    start = 14 + ihl
    if frame[23] != protocol or fragment_offset or len(frame) < start + size:
        return None
    return start


def _port(frame: bytes | memoryview, protocol: int, *, source: bool = False) -> int | None:
    start = _l4(frame, protocol, 4)
    if start is None:
        return None
    at = start if source else start + 2
    return int.from_bytes(frame[at : at + 2], "big")


def _tcp_flags(frame: bytes | memoryview) -> int | None:
    start = _l4(frame, _TCP, 14)
    return None if start is None else frame[start + 13]


def _whole_frames(buffer: bytearray, forwarded_port: int | None) -> tuple[bytes, int]:
    """The allowed frames at the start of `buffer` (each with its length prefix) and how
    many bytes of it were whole frames."""
    allowed = bytearray()
    view = memoryview(buffer)
    at = 0
    while len(buffer) - at >= _LENGTH:
        end = at + _LENGTH + int.from_bytes(view[at : at + _LENGTH], "big")
        if end > len(buffer):
            break
        if frame_allowed(view[at + _LENGTH : end], forwarded_port):
            allowed += view[at:end]
        at = end
    view.release()
    return bytes(allowed), at


def _guard(guest: socket.socket, slirp: socket.socket, forwarded_port: int | None) -> None:
    pending = bytearray()
    while chunk := guest.recv(_CHUNK):
        pending += chunk
        allowed, used = _whole_frames(pending, forwarded_port)
        del pending[:used]
        if allowed:
            slirp.sendall(allowed)


def _copy(source: socket.socket, sink: socket.socket) -> None:
    while chunk := source.recv(_CHUNK):
        sink.sendall(chunk)


def _pump(work: Callable[[], None], done: threading.Event) -> None:
    try:
        work()
    except OSError:
        pass
    finally:
        done.set()


def _listen(path: Path, owner: tuple[int, int]) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        os.chown(path, *owner)
    listener.listen(1)
    return listener


def _accept_both(listeners: list[socket.socket], timeout: float) -> list[socket.socket] | None:
    """One connection on each listener, in their order; None if not all came in time."""
    accepted: dict[int, socket.socket] = {}
    deadline = time.monotonic() + timeout
    while len(accepted) < len(listeners):
        waiting = [s for i, s in enumerate(listeners) if i not in accepted]
        ready, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        for sock in ready:
            accepted[listeners.index(sock)], _ = sock.accept()
    return [accepted[i] for i in range(len(listeners))]


def _background(pid_file: Path) -> None:
    """Go on in a child of our own session; the parent records the child's pid, says
    "ready" to whoever started us and exits (so they need not reap us later)."""
    sys.stdout.flush()
    if child := os.fork():
        pid_file.write_text(f"{child}\n")
        print("ready", flush=True)
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _drop_privileges() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Connect a QEMU card to slirp, guarded.")
    parser.add_argument("--guest", type=Path, required=True, help="socket for the card")
    parser.add_argument("--slirp", type=Path, required=True, help="socket for slirp")
    parser.add_argument("--owner", required=True, help="UID:GID allowed to connect (QEMU's)")
    parser.add_argument("--forwarded-port", type=int, help="guest port of the Docker forward")
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--accept-timeout", type=float, default=120.0)
    opts = parser.parse_args(args)
    uid, gid = (int(part) for part in opts.owner.split(":"))
    paths = [opts.guest, opts.slirp]
    try:
        listeners = [_listen(path, (uid, gid)) for path in paths]
    except OSError as exc:
        for path in paths:
            path.unlink(missing_ok=True)
        print(f"error: {exc}", flush=True)
        return 1
    _background(opts.pid_file)
    try:
        both = _accept_both(listeners, opts.accept_timeout)
    finally:
        for listener in listeners:
            listener.close()
        for path in [*paths, opts.pid_file]:
            path.unlink(missing_ok=True)
    if both is None:
        return 1  # QEMU did not start
    guest, slirp = both
    if os.geteuid() == 0:
        _drop_privileges()
    done = threading.Event()
    for work in (
        lambda: _guard(guest, slirp, opts.forwarded_port),
        lambda: _copy(slirp, guest),
    ):
        threading.Thread(target=_pump, args=(work, done), daemon=True).start()
    done.wait()
    for sock in both:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
