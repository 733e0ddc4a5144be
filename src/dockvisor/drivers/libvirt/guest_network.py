"""The network of dockvisor's QEMU guests, and the rule it keeps: a guest never reaches
a service on the host's loopback (dockvisor's own API and engine gateway, a local
database...), whatever it sends.

QEMU's user-mode network (slirp) gives a guest the host's outbound network, but its
gateway 10.0.2.2 is the host's 127.0.0.1 (and so is 127.0.0.1 itself, for root in the
guest); neither QEMU 7.2 nor any later QEMU passes libslirp's `disable_host_loopback`
on, and `restrict=on` cuts the guest off from everything. So each
host runs its guests in one of two modes, DOCKVISOR_GUEST_NETWORK:

- `outbound` (the default): the card and slirp are each connected to a frame guard
  (frame_guard.py), a small process dockvisor starts before each start of the VM's QEMU,
  which passes on only what cannot reach the host itself. The guest reaches what the
  host reaches, from the host's addresses: other machines, the internet, and services
  listening on the host's non-loopback addresses; its DNS queries (port 53 of 10.0.2.3)
  go to the host's name server; nothing else on the host's loopback, and no link-local
  address (cloud metadata services).
- `isolated`: the card is on slirp with `restrict=on`: the guest reaches nothing
  outside itself (no DNS either); only the Docker port forward comes in.

In both modes the guest sees 10.0.2.15/24 with gateway 10.0.2.2 (no IPv6), its Docker
API is forwarded from 127.0.0.1:PORT on the host, and slirp lives in the VM's own QEMU, so
a memory snapshot loads in either mode. Guests of a remote QEMU host are isolated:
dockvisor cannot start a guard on another machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

from dockvisor.drivers.libvirt.domain_xml import guard_slirp_socket
from dockvisor.errors import HypervisorError, InvalidInput, Unsupported

__all__ = [
    "GUEST_NETWORK_ENV",
    "GuestNetworkMode",
    "GuestNetworks",
    "default_run_dir",
    "guest_network_mode",
    "qemu_owner",
]

GuestNetworkMode = Literal["outbound", "isolated"]
GUEST_NETWORK_ENV = "DOCKVISOR_GUEST_NETWORK"
FRAME_GUARD = Path(__file__).with_name("frame_guard.py")
_READY_TIMEOUT = 30.0
_ACCEPT_TIMEOUT = 120.0


def guest_network_mode() -> GuestNetworkMode:
    """The mode this host's guests run in: DOCKVISOR_GUEST_NETWORK, `outbound` if unset."""
    text = os.environ.get(GUEST_NETWORK_ENV, "").strip().lower() or "outbound"
    if text not in ("outbound", "isolated"):
        raise InvalidInput(f"{GUEST_NETWORK_ENV}={text!r}: use outbound or isolated")
    return "outbound" if text == "outbound" else "isolated"


def qemu_owner(capabilities_xml: str, virt_type: str) -> tuple[int, int]:
    """The uid and gid libvirt runs QEMU as (its DAC security model's base label), or our
    own where libvirt reports none (a session connection runs QEMU as its user)."""
    for kind in (virt_type, "qemu", "kvm"):
        label = rf"<baselabel type='{kind}'>\+(\d+):\+(\d+)</baselabel>"
        if match := re.search(label, capabilities_xml):
            return int(match[1]), int(match[2])
    return os.geteuid(), os.getegid()


def default_run_dir() -> Path:
    """Where the sockets QEMU connects to live: /run/dockvisor/net as root, else the
    user's runtime directory."""
    if os.geteuid() == 0:
        return Path("/run/dockvisor/net")
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "dockvisor" / "net"
    return Path(tempfile.gettempdir()) / f"dockvisor-{os.geteuid()}" / "net"


class GuestNetworks:
    """Starts and ends the frame guard of each VM of one local QEMU host."""

    def __init__(self, run_dir: Path, owner: tuple[int, int]) -> None:
        self.run_dir = run_dir
        self.owner = owner

    def nic_socket(self, vm: str) -> str:
        """The unix socket the VM's card connects to (slirp's: guard_slirp_socket)."""
        return str(self.run_dir / f"{vm}.sock")

    def _pid_file(self, vm: str) -> Path:
        return self.run_dir / f"{vm}.pid"

    def check(self) -> None:
        """Unsupported, saying what to do, if QEMU could not connect to our sockets."""
        if os.geteuid() != 0 and self.owner[0] != os.geteuid():
            raise Unsupported(
                f"QEMU runs as uid {self.owner[0]}: only root can hand it the sockets of "
                f"its network; run dockvisor as root, or set {GUEST_NETWORK_ENV}=isolated"
            )

    @contextmanager
    def running(self, vm: str, *, guest_port: int | None) -> Iterator[None]:
        """Start the VM's guard; if the block fails (QEMU did not start), end it."""
        self.start(vm, guest_port=guest_port)
        try:
            yield
        except BaseException:
            self.stop(vm)
            raise

    def start(self, vm: str, *, guest_port: int | None) -> None:
        """Start the frame guard for the next start of `vm`'s QEMU (which must connect
        within two minutes). A guard left by an earlier start that QEMU never connected
        to is ended first."""
        self.check()
        self.stop(vm)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o711)  # QEMU's user may pass through, not list
        nic = self.nic_socket(vm)
        argv = [
            sys.executable, "-I", str(FRAME_GUARD), "--guest", nic,
            "--slirp", guard_slirp_socket(nic), "--owner", f"{self.owner[0]}:{self.owner[1]}",
            "--pid-file", str(self._pid_file(vm)), "--accept-timeout", str(_ACCEPT_TIMEOUT),
        ]  # fmt: skip
        if guest_port:
            argv += ["--forwarded-port", str(guest_port)]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=_READY_TIMEOUT, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            self.stop(vm)
            raise HypervisorError(f"starting the network of VM {vm}: no answer in "
                                  f"{_READY_TIMEOUT:.0f} s") from exc  # fmt: skip
        said = (done.stdout.strip().splitlines() or [done.stderr.strip()[-300:]])[-1]
        if done.returncode != 0 or said != "ready":
            self.stop(vm)
            reason = said.removeprefix("error: ") or f"status {done.returncode}"
            raise HypervisorError(f"starting the network of VM {vm}: {reason}")

    def stop(self, vm: str) -> None:
        """End a guard of `vm` that QEMU did not connect to, and remove its files. A guard
        serving a running VM has removed its pid file and is left alone; it ends with
        QEMU."""
        pid_file = self._pid_file(vm)
        nic = self.nic_socket(vm)
        with suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if _is_guard(pid, nic):
                _end(pid)
        pid_file.unlink(missing_ok=True)
        for path in (Path(nic), Path(guard_slirp_socket(nic))):
            with suppress(OSError):
                if path.is_socket():
                    path.unlink()


def _is_guard(pid: int, nic_socket: str) -> bool:
    """Whether `pid` is the frame guard of the card at `nic_socket` (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(FRAME_GUARD).encode() in argv and nic_socket.encode() in argv


def _end(pid: int, timeout: float = 3.0) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie its parent has yet to reap does not)."""
    return process_stat(pid) is not None


def process_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat from its 3rd (the state) on, if process `pid` runs
    (None if there is none, or only a zombie its parent has yet to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return None if fields[0] == "Z" else fields
