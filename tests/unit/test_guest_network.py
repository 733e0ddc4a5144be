"""The frame guard between a guest's card and slirp, without a VM: its rule on frames, and
its life as a process (started by GuestNetworks, connected by a stand-in for QEMU)."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import pytest

from dockvisor.drivers.libvirt.frame_guard import _whole_frames, frame_allowed
from dockvisor.drivers.libvirt.guest_network import (
    FRAME_GUARD,
    GuestNetworks,
    guest_network_mode,
    qemu_owner,
)
from dockvisor.errors import InvalidInput

GUEST_MAC = bytes.fromhex("525400abcdef")
GATEWAY_MAC = bytes.fromhex("52550a000202")
DOCKER_PORT = 2376


def ipv4(dst: str, protocol: int = 6, *, sport: int = 40000, dport: int = 80,
         flags: int = 0x02, fragment_offset: int = 0, ihl: int = 5) -> bytes:  # fmt: skip
    """An Ethernet frame from the guest (10.0.2.15) to `dst`."""
    l4 = struct.pack("!HH", sport, dport)
    l4 += (
        struct.pack("!IIBBHHH", 1, 0, 5 << 4, flags, 64240, 0, 0)
        if protocol == 6
        else (struct.pack("!HH", 8, 0))
    )
    options = b"\0" * ((ihl - 5) * 4)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(l4), 1, fragment_offset,
        64, protocol, 0, socket.inet_aton("10.0.2.15"), socket.inet_aton(dst),
    ) + options  # fmt: skip
    return GATEWAY_MAC + GUEST_MAC + b"\x08\x00" + header + l4


def allowed(frame: bytes) -> bool:
    return frame_allowed(frame, DOCKER_PORT)


# -- the rule --------------------------------------------------------------------------


@pytest.mark.parametrize("dst", ["198.51.100.7", "192.0.2.2", "10.1.2.3", "172.17.0.1"])
def test_the_network_beyond_slirp_is_reached(dst: str) -> None:
    assert allowed(ipv4(dst))
    assert allowed(ipv4(dst, 17, dport=443))


@pytest.mark.parametrize(
    "dst", ["127.0.0.1", "127.0.0.53", "0.0.0.0", "0.1.2.3", "169.254.169.254", "224.0.0.251",
            "240.0.0.1"],
)  # fmt: skip
def test_the_hosts_loopback_link_local_and_multicast_are_not(dst: str) -> None:
    assert not allowed(ipv4(dst))
    assert not allowed(ipv4(dst, 17, dport=53))


def test_the_gateway_takes_only_dhcp_and_the_guests_side_of_the_docker_forward() -> None:
    assert not allowed(ipv4("10.0.2.2", dport=5432))  # a new connection: the host's loopback
    assert not allowed(ipv4("10.0.2.2", sport=DOCKER_PORT, dport=5432))  # SYN, even from there
    assert not allowed(ipv4("10.0.2.2", 17, dport=5432))
    assert not allowed(ipv4("10.0.2.2", 17, dport=53))
    assert not allowed(ipv4("10.0.2.2", sport=40000, dport=5432, flags=0x10))  # ACK, other port
    assert allowed(ipv4("10.0.2.2", sport=DOCKER_PORT, dport=51000, flags=0x12))  # SYN-ACK
    assert allowed(ipv4("10.0.2.2", sport=DOCKER_PORT, dport=51000, flags=0x18))  # data
    assert allowed(ipv4("10.0.2.2", 17, sport=68, dport=67))  # a DHCP renewal
    assert not frame_allowed(ipv4("10.0.2.2", sport=DOCKER_PORT, flags=0x10), None)


def test_the_name_server_takes_dns_only() -> None:
    assert allowed(ipv4("10.0.2.3", 17, dport=53))
    assert allowed(ipv4("10.0.2.3", 6, dport=53))
    assert not allowed(ipv4("10.0.2.3", 6, dport=5432))
    assert not allowed(ipv4("10.0.2.3", 17, dport=5353))
    # a later fragment shows no port: it cannot be DNS to the host's resolver
    assert not allowed(ipv4("10.0.2.3", 17, dport=53, fragment_offset=100))


@pytest.mark.parametrize("dst", ["10.0.2.4", "10.0.2.100", "10.0.2.255", "10.0.2.0"])
def test_the_rest_of_slirps_network_is_not_reached(dst: str) -> None:
    assert not allowed(ipv4(dst))
    assert not allowed(ipv4(dst, 17, dport=53))


def test_broadcast_is_for_dhcp_only() -> None:
    assert allowed(ipv4("255.255.255.255", 17, sport=68, dport=67))
    assert not allowed(ipv4("255.255.255.255", 17, dport=9))


def test_ip_options_move_the_ports_and_are_read_past() -> None:
    assert allowed(ipv4("10.0.2.3", 17, dport=53, ihl=6))
    assert not allowed(ipv4("10.0.2.3", 17, dport=5432, ihl=6))


def test_arp_passes_and_ipv6_vlan_and_broken_frames_do_not() -> None:
    arp = GATEWAY_MAC + GUEST_MAC + b"\x08\x06" + b"\0" * 28
    assert allowed(arp)
    ipv6 = GATEWAY_MAC + GUEST_MAC + b"\x86\xdd" + b"\x60" + b"\0" * 39
    assert not allowed(ipv6)
    vlan = GATEWAY_MAC + GUEST_MAC + b"\x81\x00\x00\x01\x08\x00" + ipv4("198.51.100.7")[14:]
    assert not allowed(vlan)
    frame = ipv4("198.51.100.7")
    assert not allowed(frame[:20])  # cut short
    assert not allowed(frame[:14] + b"\x60" + frame[15:])  # says IPv6 in an IPv4 frame
    assert not allowed(ipv4("10.0.2.3", 17, dport=53, ihl=4))  # impossible header length
    assert not allowed(ipv4("10.0.2.3", 17, dport=53)[:36])  # no room for the ports


def test_the_stream_keeps_whole_frames_in_order_and_waits_for_the_rest() -> None:
    good, bad, late = ipv4("198.51.100.7"), ipv4("127.0.0.1"), ipv4("198.51.100.8")
    stream = bytearray()
    for frame in (good, bad, late):
        stream += struct.pack("!I", len(frame)) + frame
    cut = len(stream) - 10
    passed, used = _whole_frames(bytearray(stream[:cut]), DOCKER_PORT)
    assert passed == struct.pack("!I", len(good)) + good
    assert used == 8 + len(good) + len(bad)
    passed, used = _whole_frames(bytearray(stream[used:]), DOCKER_PORT)
    assert passed == struct.pack("!I", len(late)) + late and used == 4 + len(late)


# -- the mode and QEMU's user ----------------------------------------------------------


def test_the_mode_is_outbound_unless_the_host_says_isolated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCKVISOR_GUEST_NETWORK", raising=False)
    assert guest_network_mode() == "outbound"
    monkeypatch.setenv("DOCKVISOR_GUEST_NETWORK", "Isolated")
    assert guest_network_mode() == "isolated"
    monkeypatch.setenv("DOCKVISOR_GUEST_NETWORK", "open")
    with pytest.raises(InvalidInput, match="outbound or isolated"):
        guest_network_mode()


def test_qemus_user_is_read_from_libvirts_capabilities() -> None:
    caps = (
        "<secmodel><model>dac</model><doi>0</doi><baselabel type='kvm'>+64055:+108</baselabel>"
        "<baselabel type='qemu'>+64055:+64055</baselabel></secmodel>"
    )
    assert qemu_owner(caps, "qemu") == (64055, 64055)
    assert qemu_owner(caps, "kvm") == (64055, 108)
    assert qemu_owner("<capabilities/>", "qemu") == (os.geteuid(), os.getegid())


# -- the process -------------------------------------------------------------------------


def guard_pids(run_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(FRAME_GUARD).encode() in argv and any(str(run_dir).encode() in a for a in argv):
                pids.append(int(proc.name))
    return pids


def gone(run_dir: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while guard_pids(run_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not guard_pids(run_dir)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def test_the_guard_passes_what_the_rule_allows_and_ends_with_qemu(tmp_path: Path) -> None:
    networks = GuestNetworks(tmp_path / "net", (os.geteuid(), os.getegid()))
    networks.start("web", guest_port=DOCKER_PORT)
    nic = Path(networks.nic_socket("web"))
    slirp_side = nic.with_name("web.slirp.sock")
    assert nic.is_socket() and slirp_side.is_socket()
    assert oct(nic.stat().st_mode & 0o777) == "0o600"
    assert oct(nic.parent.stat().st_mode & 0o777) == "0o711"
    guest, slirp = connect(str(nic)), connect(str(slirp_side))  # what QEMU does at start
    try:
        good, bad = ipv4("198.51.100.7"), ipv4("10.0.2.2", dport=5432)
        for frame in (bad, good):
            guest.sendall(struct.pack("!I", len(frame)) + frame)
        assert read_exactly(slirp, 4 + len(good)) == struct.pack("!I", len(good)) + good
        reply = ipv4("10.0.2.15")  # whatever slirp sends comes through as it is
        slirp.sendall(struct.pack("!I", len(reply)) + reply)
        assert read_exactly(guest, 4 + len(reply)) == struct.pack("!I", len(reply)) + reply
        assert sorted(p.name for p in nic.parent.iterdir()) == []  # connected: files gone
        (pid,) = guard_pids(tmp_path)
        if os.geteuid() == 0:
            assert os.stat(f"/proc/{pid}").st_uid != 0  # it dropped root
        networks.stop("web")  # a guard serving a VM is left alone
        assert guard_pids(tmp_path) == [pid]
    finally:
        guest.close()  # QEMU ends
        slirp.close()
    assert gone(tmp_path)


def test_a_guard_qemu_never_connected_to_is_ended_with_its_files(tmp_path: Path) -> None:
    networks = GuestNetworks(tmp_path / "net", (os.geteuid(), os.getegid()))
    networks.start("web", guest_port=None)
    assert len(guard_pids(tmp_path)) == 1
    networks.start("web", guest_port=None)  # the next start ends the first
    assert len(guard_pids(tmp_path)) == 1
    networks.stop("web")
    assert gone(tmp_path)
    assert list((tmp_path / "net").iterdir()) == []


def test_a_failed_start_of_qemu_ends_the_guard(tmp_path: Path) -> None:
    networks = GuestNetworks(tmp_path / "net", (os.geteuid(), os.getegid()))
    with pytest.raises(RuntimeError), networks.running("web", guest_port=DOCKER_PORT):
        raise RuntimeError("QEMU did not start")
    assert gone(tmp_path)
    assert list((tmp_path / "net").iterdir()) == []
