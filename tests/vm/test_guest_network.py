"""A real guest's network (issue 8, item 5): it reaches the network, never the host's loopback.

Servers listen on the host's 127.0.0.1; containers in a real VM try every way to them a
guest can learn: slirp's gateway 10.0.2.2 (the host's loopback in QEMU's user-mode
network), the other addresses of 10.0.2.0/24, the host's own addresses, and, as root in
the guest, a route for 127.0.0.1 itself via the gateway. The outbound network is checked
against a server on a TEST-NET address of a test interface of this host, so no packet
leaves the machine (this machine's own address is in TEST-NET-1, so TEST-NET-2 is used).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockvisor.domain.model import VMSpec
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml, qemu_args_of
from dockvisor.drivers.libvirt.guest_network import FRAME_GUARD
from dockvisor.engines.docker import DockerEngine
from dockvisor.errors import DockvisorError
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.engines import EngineAccess

pytestmark = pytest.mark.vm

RUN_DIR = Path("/run/dockvisor/net")


@dataclass
class Server:
    """A TCP server that answers each connection with its name and records who came."""

    host: str
    name: str
    peers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((self.host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                conn.sendall(f"reached-{self.name}\n".encode())


@dataclass
class Net:
    loopback: Server  # on 127.0.0.1: no guest may reach it
    outside: Server  # on a TEST-NET address: every guest reaches it
    host_addresses: list[str]


def _host_ipv4_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback]


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    """The servers, and a test interface holding a TEST-NET-2 address (removed after)."""
    taken = set(_host_ipv4_addresses())
    address = next(a for a in (f"198.51.100.{secrets.randbelow(200) + 20}" for _ in range(50))
                   if a not in taken)  # fmt: skip
    device = f"dvt{secrets.token_hex(3)}"
    for kind in ("dummy", "ifb"):  # ifb where the kernel has no dummy driver
        if subprocess.run(["ip", "link", "add", device, "type", kind],
                          capture_output=True).returncode == 0:  # fmt: skip
            break
    else:
        raise AssertionError("cannot add a test interface (dummy or ifb) for the outside server")
    try:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", device], check=True)
        subprocess.run(["ip", "link", "set", device, "up"], check=True)
        yield Net(Server("127.0.0.1", "loopback"), Server(address, "outside"),
                  _host_ipv4_addresses())  # fmt: skip
    finally:
        subprocess.run(["ip", "link", "del", device], check=False)


@pytest.fixture(scope="module")
def driver() -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver("qemu:///system")
    template_service.build_builtin_template(drv)
    yield drv
    drv.close()


@pytest.fixture(scope="module")
def vm(driver: LibvirtDriver, run_prefix: str) -> Iterator[str]:
    name = f"{run_prefix}net-{secrets.token_hex(2)}"
    vm_service.create_vm_from_template(
        driver, name=name, template="docker-ready", vcpus=1, memory=512 * MiB, max_vcpus=2
    )
    yield name
    vm_service.delete_vm(driver, name, force=True)


def engine_of(driver: LibvirtDriver, name: str) -> DockerEngine:
    engine = EngineAccess.default().engine(driver.docker_endpoint(name), timeout=120)
    engine.wait_until_ready(120)  # through the forward from 127.0.0.1
    return engine


def tries(targets: dict[str, str]) -> str:
    """A shell script that connects to each target ("ADDRESS PORT") and prints
    NAME=<what came back or why not>."""
    return "; ".join(
        f'echo "{name}=$(timeout 10 nc -w 3 {target} </dev/null 2>&1 | head -c 80)"'
        for name, target in targets.items()
    )


def results(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def loopback_targets(net: Net) -> dict[str, str]:
    """Every address a container can learn for the host, at the loopback server's port."""
    port = net.loopback.port
    targets = {f"10.0.2.{n}": f"10.0.2.{n} {port}" for n in (2, 3, 4, 100)}
    targets.update({f"host {a}": f"{a} {port}" for a in net.host_addresses})
    return targets


def assert_reaches_the_outside_not_the_loopback(engine: DockerEngine, net: Net) -> None:
    targets = {**loopback_targets(net), "outside": f"{net.outside.host} {net.outside.port}"}
    seen = results(engine.run_to_completion("busybox:latest", ["sh", "-c", tries(targets)],
                                            timeout=180))  # fmt: skip
    assert seen.pop("outside") == "reached-outside"  # the guest keeps the host's network
    assert not [k for k, v in seen.items() if "reached" in v], seen
    assert net.loopback.peers == []


# -- what a container reaches --------------------------------------------------------------


def test_a_container_reaches_the_network_but_no_service_on_the_hosts_loopback(
    driver: LibvirtDriver, vm: str, net: Net
) -> None:
    engine = engine_of(driver, vm)
    assert engine.ping()
    assert_reaches_the_outside_not_the_loopback(engine, net)


def test_root_in_the_guest_cannot_route_to_the_hosts_loopback(
    driver: LibvirtDriver, vm: str, net: Net
) -> None:
    """The guest's root (here a privileged container on the guest's own network) asks
    its gateway, whatever it is, and sends to 127.0.0.1 itself out of eth0 (both reached
    the host's loopback before the guard)."""
    port = net.loopback.port
    outside = f"{net.outside.host} {net.outside.port}"
    script = f"""
        gateway=$(ip route | awk '/^default/ {{print $3}}')
        echo "gateway-is=$gateway"
        {tries({"gateway": f"$gateway {port}", "outside": outside})}
        sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1
        ip rule add pref 10 lookup local; ip rule del pref 0
        ip rule add pref 5 to 127.0.0.1/32 lookup 100
        ip route replace 127.0.0.1/32 via $gateway dev eth0 table 100
        echo "route-to-127=$(ip route get 127.0.0.1 | head -1)"
        {tries({"127.0.0.1 out of eth0": f"127.0.0.1 {port}"})}
    """
    output = run_as_guest_root(driver, vm, script)
    seen = results(output)
    assert seen["gateway-is"] == "10.0.2.2"
    assert "dev eth0" in seen["route-to-127"]
    assert seen["outside"] == "reached-outside"
    for way in ("gateway", "127.0.0.1 out of eth0"):
        assert "reached" not in seen[way], (way, seen[way])
    assert net.loopback.peers == []


def run_as_guest_root(driver: LibvirtDriver, vm: str, script: str) -> str:
    """Run `script` in a privileged container on the guest's own network namespace,
    through the Docker Engine API (dockvisor's client offers neither)."""
    endpoint = driver.docker_endpoint(vm)
    engine = engine_of(driver, vm)
    tls = {"sni_hostname": endpoint.server_name} if endpoint.server_name else {}
    with httpx.Client(base_url=f"https://{endpoint.host}:{endpoint.port}", timeout=60,
                      verify=EngineAccess.default().pki.client_context(),
                      trust_env=False) as api:  # fmt: skip
        body: dict[str, Any] = {
            "Image": "busybox:latest",
            "Cmd": ["sh", "-c", script],
            "HostConfig": {"NetworkMode": "host", "Privileged": True},
        }
        created = api.post("/containers/create", json=body, extensions=tls)
        assert created.status_code == 201, created.text
    cid = created.json()["Id"]
    try:
        engine.start(cid)
        assert engine.wait(cid, 180) == 0
        return engine.logs(cid)
    finally:
        engine.remove(cid, force=True)


def test_an_isolated_host_gives_its_guests_the_docker_forward_and_nothing_else(
    driver: LibvirtDriver, net: Net, run_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKVISOR_GUEST_NETWORK", "isolated")
    name = f"{run_prefix}net-{secrets.token_hex(2)}"
    vm_service.create_vm_from_template(driver, name=name, template="docker-ready", vcpus=1,
                                       memory=512 * MiB)  # fmt: skip
    outside_before = len(net.outside.peers)
    try:
        engine = engine_of(driver, name)  # the forward comes in
        targets = {**loopback_targets(net), "outside": f"{net.outside.host} {net.outside.port}"}
        seen = results(engine.run_to_completion("busybox:latest", ["sh", "-c", tries(targets)],
                                                timeout=180))  # fmt: skip
        assert not [k for k, v in seen.items() if "reached" in v], seen
        assert net.loopback.peers == [] and len(net.outside.peers) == outside_before
    finally:
        vm_service.delete_vm(driver, name, force=True)


# -- every path that starts QEMU -----------------------------------------------------------


def test_a_reverted_vm_and_a_clone_keep_the_network_and_the_rule(
    driver: LibvirtDriver, vm: str, net: Net, run_prefix: str
) -> None:
    driver.create_snapshot(vm, "net")
    try:
        driver.revert_to_snapshot(vm, "net")  # a new QEMU, started paused, loads memory
        assert_reaches_the_outside_not_the_loopback(engine_of(driver, vm), net)
    finally:
        driver.delete_snapshot(vm, "net")
    clone = f"{run_prefix}net-{secrets.token_hex(2)}"
    engines = EngineAccess.default()
    driver.clone_vm(vm, clone, guest=engines.guest_config(clone))
    try:
        driver.start_vm(clone)
        assert_reaches_the_outside_not_the_loopback(engine_of(driver, clone), net)
    finally:
        vm_service.delete_vm(driver, clone, force=True)
    assert leftovers(clone) == ([], [])


def test_a_vm_defined_with_the_old_bare_slirp_is_guarded_from_its_next_start(
    driver: LibvirtDriver, net: Net, run_prefix: str
) -> None:
    """VMs made before the guard have their card on slirp with no restriction."""
    name = f"{run_prefix}net-{secrets.token_hex(2)}"
    vm_service.create_vm_from_template(driver, name=name, template="docker-ready", vcpus=1,
                                       memory=512 * MiB, start=False)  # fmt: skip
    try:
        with driver.raw_connection() as conn:
            xml = conn.lookupByName(name).XMLDesc(0)
            args = qemu_args_of(xml)
            nic = args[args.index("-device") + 1]
            port = parse_domain_xml(xml).config.docker_host_port
            old = (
                f"<qemu:arg value='-netdev'/><qemu:arg value='user,id=dvnet0,hostfwd=tcp:"
                f"127.0.0.1:{port}-:2376'/><qemu:arg value='-device'/>"
                f"<qemu:arg value='{nic}'/>"
            )
            start, end = xml.index("<qemu:commandline>"), xml.index("</qemu:commandline>")
            conn.defineXML(xml[: start + len("<qemu:commandline>")] + old + xml[end:])
        driver.start_vm(name)
        with driver.raw_connection() as conn:
            assert "user,id=dvnet0,hostfwd" not in qemu_args_of(conn.lookupByName(name).XMLDesc(0))
        assert_reaches_the_outside_not_the_loopback(engine_of(driver, name), net)
    finally:
        vm_service.delete_vm(driver, name, force=True)


# -- nothing left behind ---------------------------------------------------------------------


def leftovers(name: str) -> tuple[list[str], list[int]]:
    """Files of `name`'s network in the run directory, and its frame guards' pids."""
    files = sorted(p.name for p in RUN_DIR.glob(f"{name}.*")) if RUN_DIR.exists() else []
    guards = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(FRAME_GUARD).encode() in argv and any(name.encode() in a for a in argv):
                guards.append(int(proc.name))
    return files, guards


def eventually_clean(name: str, timeout: float = 5.0) -> tuple[list[str], list[int]]:
    deadline = time.monotonic() + timeout
    while (left := leftovers(name)) != ([], []) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_nothing_of_the_network_outlives_a_stop_a_failed_start_or_a_delete(
    driver: LibvirtDriver, run_prefix: str
) -> None:
    name = f"{run_prefix}net-{secrets.token_hex(2)}"
    driver.create_vm(VMSpec(name=name, template="docker-ready", vcpus=1, memory=512 * MiB,
                            max_vcpus=1, max_memory=512 * MiB))  # fmt: skip
    try:
        driver.start_vm(name)
        files, guards = leftovers(name)
        assert files == [] and len(guards) == 1  # QEMU connected: the guard removed its files
        owner = os.stat(f"/proc/{guards[0]}").st_uid
        assert owner != 0  # the guard dropped root once QEMU connected
        driver.force_off(name)
        assert eventually_clean(name) == ([], [])
        with driver.raw_connection() as conn:
            path = parse_domain_xml(conn.lookupByName(name).XMLDesc(0)).config.disk_path
        os.rename(path, f"{path}.away")
        try:
            with pytest.raises(DockvisorError, match="starting VM"):
                driver.start_vm(name)
            assert leftovers(name) == ([], [])
        finally:
            os.rename(f"{path}.away", path)
    finally:
        vm_service.delete_vm(driver, name, force=True)
    assert leftovers(name) == ([], [])
