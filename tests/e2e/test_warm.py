"""Warm starts on qemu:///system with real guests: `template warm` keeps spares, `vm
create` resumes one in seconds, and each VM so made has an identity no other VM has
(UUID, MAC, hostname, machine ID, engine ID, engine certificate, random bytes), the host's clock,
and the whole workflow of a cold-booted VM (containers, snapshot, revert, clone, live
resize, reboot). A spare whose saved state was cut or corrupted is refused and the
create boots cold, saying so, leaving nothing of the spare; a create killed while it
adopts a spare leaves nothing and its name free; a spare whose QEMU cannot start is
given back whole."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest

from dockvisor.drivers.libvirt.domain_xml import DomainConfig, parse_domain_xml
from dockvisor.drivers.libvirt.spares import guest_run
from dockvisor.drivers.registry import open_driver
from dockvisor.errors import DockvisorError
from tests.e2e.test_cli_lifecycle import DOCKVISOR, dv, engine_of, names_in, run

pytestmark = pytest.mark.vm


@pytest.fixture
def spares() -> Iterator[None]:
    """The built-in template's spares are this test's: none before, none after."""
    dv("template", "warm", "docker-ready", "--spares", "0")
    try:
        yield
    finally:
        dv("template", "warm", "docker-ready", "--spares", "0")


def guest(name: str, script: str) -> str:
    with engine_of(name) as engine:
        return engine.run_to_completion("busybox:latest", ["sh", "-c", script])


def guest_state(name: str) -> str:
    """What the guest says of itself (for a failure's message): memory, its dockerd's
    last log lines, the kernel's last messages."""
    conn = libvirt.open("qemu:///system")
    try:
        script = "uptime; free -m; tail -15 /var/log/dockerd.log; dmesg | tail -15"
        return guest_run(conn.lookupByName(name), ["/bin/sh", "-c", script])
    except DockvisorError as exc:
        return f"(unreadable: {exc})"
    finally:
        conn.close()


def machine_id(name: str) -> str:
    """The guest's /etc/machine-id, read by its agent."""
    conn = libvirt.open("qemu:///system")
    try:
        return guest_run(conn.lookupByName(name), ["cat", "/etc/machine-id"]).strip()
    finally:
        conn.close()


def mac_of(name: str) -> str:
    conn = libvirt.open("qemu:///system")
    try:
        return parse_domain_xml(conn.lookupByName(name).XMLDesc(0)).config.mac
    finally:
        conn.close()


def test_two_warm_vms_have_their_own_identity_and_a_full_life(
    spares: None, unique_name: str
) -> None:
    kept = dv("template", "warm", "docker-ready", "--spares", "2")
    assert [s["ready"] for s in kept] == [True, True]
    assert len({s["engine_name"] for s in kept}) == 2
    a, b = f"{unique_name}-a", f"{unique_name}-b"
    started = time.monotonic()
    proc = run("vm", "create", a, "--vcpus", "1", "--memory", "1GiB")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "warm start: resumed a spare" in proc.stderr, proc.stderr
    assert took < 15, f"a warm create answers in seconds, not a boot's time ({took:.1f} s)"
    vm_b = dv("vm", "create", b, "--vcpus", "2", "--memory", "1GiB")
    assert dv("template", "spares") == [], "each create took its own spare"
    vm_a = dv("vm", "show", a)
    assert (vm_b["vcpus"], vm_b["memory"]) == (2, 1024**3), "grown live to the asked size"
    assert vm_a["uuid"] != vm_b["uuid"]
    assert mac_of(a) != mac_of(b)
    for vm in (vm_a, vm_b):
        assert machine_id(vm["name"]) == vm["uuid"].replace("-", ""), "its own machine ID"

    facts = {}
    for name in (a, b):
        with engine_of(name) as engine:
            info = engine.info()
            try:
                inside = engine.run_to_completion("busybox:latest", [
                    "sh", "-c", "head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
                    "date +%s; hostname; nproc"])  # fmt: skip
            except DockvisorError as exc:
                raise AssertionError(f"{exc}\nin the guest:\n{guest_state(name)}") from exc
        rand, clock, host_name, cpus = inside.split()
        facts[name] = (info["ID"], info["Name"], rand)
        assert abs(int(clock) - time.time()) <= 2, "the guest's clock is the host's"
        assert info["Name"] == name and host_name != "", "its hostname is its own name"
        assert int(cpus) == (1 if name == a else 2)
    assert facts[a][0] != facts[b][0], "engine IDs differ"
    assert facts[a][2] != facts[b][2] and len(facts[a][2]) == 128, "random bytes differ"

    # The engine answers only dockvisor's client certificate, and names itself as this VM.
    driver = open_driver("qemu:///system")
    try:
        ends = {n: driver.docker_endpoint(n) for n in (a, b)}
    finally:
        driver.close()
    assert ends[a].server_name != ends[b].server_name
    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    answer = b""
    try:
        with socket.create_connection((ends[a].host, ends[a].port), timeout=10) as raw:
            with anonymous.wrap_socket(raw) as tls:
                tls.sendall(b"GET /info HTTP/1.0\r\nHost: engine\r\n\r\n")
                answer = tls.recv(100)
    except (ssl.SSLError, OSError):
        pass
    assert answer == b"", "the engine answers no client without dockvisor's certificate"
    # engine_of checks the engine's certificate against dockvisor's CA and this VM's own
    # server name (a spare's, issued when it booted); another VM's name would fail.
    with engine_of(a) as engine:
        assert engine.ping()

    # The whole workflow, on a warm-made VM.
    with engine_of(a) as engine:
        engine.run("busybox:latest", ["sleep", "3600"], name="kept")
    dv("vm", "snapshot", a, "clean")
    with engine_of(a) as engine:
        engine.run("busybox:latest", ["sleep", "3600"], name="later")
        assert {"kept", "later"} <= names_in(engine)
    dv("vm", "revert", a, "clean")
    with engine_of(a) as engine:
        assert "later" not in names_in(engine) and "kept" in names_in(engine)
    resized = dv("vm", "set", a, "--vcpus", "2", "--memory", "1536MiB")
    assert resized["applied"] == {"vcpus": 2, "memory": 1536 * 1024**2}
    assert guest(a, "nproc").strip() == "2"
    clone = f"{unique_name}-c"
    dv("vm", "clone", a, clone, "--start")
    with engine_of(clone) as engine:
        assert engine.info()["ID"] != facts[a][0], "a clone of a warm VM has its own engine"
    assert machine_id(clone) not in {machine_id(a), machine_id(b)}
    dv("vm", "reboot", a, "--wait")
    with engine_of(a) as engine:
        assert engine.info()["ID"] == facts[a][0], "a reboot keeps the VM's engine identity"
        assert engine.info()["Name"] == a
    for name in (clone, a, b):
        dv("vm", "rm", "--force", name)


def spare_configs(conn: libvirt.virConnect) -> list[DomainConfig]:
    """The host's spares, oldest saved first (the order creates take them in)."""
    configs = [parse_domain_xml(d.XMLDesc(0)).config for d in conn.listAllDomains(0)
               if d.name().startswith("spare.")]  # fmt: skip
    return sorted(configs, key=lambda c: c.seal.saved if c.seal else datetime.now(UTC))


def volumes_left(conn: libvirt.virConnect, volumes: tuple[str, ...]) -> set[str]:
    pool = conn.storagePoolLookupByName("dockvisor")
    pool.refresh(0)
    return set(volumes) & {v.name() for v in pool.listAllVolumes(0)}


def cut(disk: Path) -> None:
    with disk.open("r+b") as f:
        f.truncate(disk.stat().st_size // 2)


def corrupt(disk: Path) -> None:
    """Overwrite 64 KiB in the middle of the file (its size stays the same)."""
    size = disk.stat().st_size
    with disk.open("r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(64 * 1024))
    assert disk.stat().st_size == size


def test_cut_and_corrupted_spares_are_refused_and_the_create_boots_cold(
    spares: None, unique_name: str
) -> None:
    """Two damaged spares, met by one create: the older cut short (seen by its size,
    before it is claimed), the newer corrupted at the same size (seen by its checksum,
    once claimed, before QEMU reads it). Both are removed; the create says both."""
    dv("template", "warm", "docker-ready", "--spares", "2")
    conn = libvirt.open("qemu:///system")
    try:
        older, newer = spare_configs(conn)
        cut(Path(older.disk_path))
        corrupt(Path(newer.disk_path))
        proc = run("vm", "create", unique_name)
        assert proc.returncode == 0, proc.stderr
        assert "booted cold:" in proc.stderr, proc.stderr
        assert f"spare {older.name} is" in proc.stderr and "(cut or changed)" in proc.stderr
        assert f"spare {newer.name} does not match the checksum taken when it was saved" in (
            proc.stderr
        ), proc.stderr
        assert not any(d.name().startswith("spare.") for d in conn.listAllDomains(0))
        assert not volumes_left(conn, older.volumes + newer.volumes), "nothing of them left"
    finally:
        conn.close()
    with engine_of(unique_name) as engine:
        assert engine.info()["Name"] == unique_name
    assert machine_id(unique_name) == dv("vm", "show", unique_name)["uuid"].replace("-", "")
    dv("vm", "rm", "--force", unique_name)


def test_a_killed_create_leaves_nothing_and_a_spare_qemu_cannot_start_is_given_back(
    spares: None, unique_name: str
) -> None:
    """`vm create` killed (SIGKILL) once it claimed a spare: no VM, no spare, no file is
    left once spares are listed, and the name is free. Then a create whose spare QEMU
    cannot start (another process holds its disk's lock) boots cold and gives the spare
    back whole: the next create resumes it."""
    dv("template", "warm", "docker-ready", "--spares", "2")
    conn = libvirt.open("qemu:///system")
    try:
        first, second = spare_configs(conn)
        proc = subprocess.Popen([DOCKVISOR, "vm", "create", unique_name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while unique_name not in {d.name() for d in conn.listAllDomains(0)}:
                assert time.monotonic() < deadline, "the create never claimed the spare"
                assert proc.poll() is None, "the create ended before it was killed"
                time.sleep(0.005)
        finally:
            proc.kill()
            proc.wait()
        # Killed halfway through the adoption (of the older spare): no VM of that name...
        assert unique_name not in {vm["name"] for vm in dv("vm", "list")}
        left = dv("template", "spares")  # ...and the listing swept the half-adopted spare
        assert [s["name"] for s in left] == [second.name]
        assert unique_name not in {d.name() for d in conn.listAllDomains(0)}
        assert not volumes_left(conn, first.volumes), "its disk and config drive went too"
    finally:
        conn.close()

    # The name is free. Its create meets a spare whose QEMU cannot take its disk's lock.
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", second.disk_path],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.0)
        assert holder.poll() is None, "qemu-io holds the file"
        proc = run("vm", "create", unique_name)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 0, proc.stderr
    assert "booted cold:" in proc.stderr and "could not start" in proc.stderr, proc.stderr
    assert "(it is kept)" in proc.stderr, proc.stderr
    back = dv("template", "spares")
    assert [(s["name"], s["ready"]) for s in back] == [(second.name, True)], "given back"
    with engine_of(unique_name) as engine:
        assert engine.info()["Name"] == unique_name
    other = f"{unique_name}-b"
    proc = run("vm", "create", other)
    assert proc.returncode == 0 and "warm start: resumed a spare" in proc.stderr, proc.stderr
    with engine_of(other) as engine:
        assert engine.info()["Name"] == other
    for name in (unique_name, other):
        dv("vm", "rm", "--force", name)
