"""The whole VM lifecycle through the `dockvisor` command, on qemu:///system with real guests.

Each step runs the installed console script in a subprocess, as a user would, and looks
at the result from outside: the Docker engine in the guest, libvirt, the disk.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt
import pytest

from dockvisor.domain.sizes import GiB, MiB
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml, with_network
from dockvisor.drivers.registry import open_driver
from dockvisor.engines.docker import DockerEngine
from dockvisor.services.engines import EngineAccess

pytestmark = pytest.mark.vm

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))
POOL_DIR = Path("/var/lib/libvirt/images/dockvisor")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCKVISOR, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def dv(*args: str) -> Any:
    """Run `dockvisor --json ARGS`; its JSON output. Fails the test on a non-zero exit."""
    proc = run("--json", *args)
    assert proc.returncode == 0, f"dockvisor {' '.join(args)} failed: {proc.stderr}"
    assert proc.stderr == "", "a command that succeeds off a terminal prints nothing on stderr"
    return json.loads(proc.stdout)


def dv_error(*args: str, code: int = 1, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail; its one-line error message."""
    proc = run(*args, env=env)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dockvisor: error: "), proc.stderr
    return lines[0]


def engine_of(name: str) -> DockerEngine:
    """The VM's engine, as dockvisor reaches it: mutual TLS with the data directory's
    client certificate, the engine's certificate checked by its own name."""
    driver = open_driver("qemu:///system")
    try:
        endpoint = driver.docker_endpoint(name)
    finally:
        driver.close()
    assert endpoint.host == "127.0.0.1" and endpoint.tls and endpoint.server_name
    return EngineAccess.default().engine(endpoint)


def names_in(engine: DockerEngine) -> set[str]:
    return {c["Names"][0].lstrip("/") for c in engine.containers(all=True)}


def guest_sees(engine: DockerEngine) -> tuple[int, int]:
    """vCPUs and memory (bytes) as a container started now sees them."""
    out = engine.run_to_completion(
        "busybox:latest", ["sh", "-c", "nproc; grep MemTotal /proc/meminfo"]
    )
    cpus, meminfo = out.strip().splitlines()
    match = re.search(r"(\d+) kB", meminfo)
    assert match, meminfo
    return int(cpus), int(match.group(1)) * 1024


def libvirt_domains() -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {d.name() for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def files_of(name: str) -> list[Path]:
    return sorted(POOL_DIR.glob(f"{name}-*"))


def test_create_run_snapshot_break_revert_clone_grow_delete(unique_name: str) -> None:
    name, clone = unique_name, f"{unique_name}-c"

    vm = dv("vm", "create", name, "--template", "docker-ready", "--vcpus", "2",
            "--memory", "1GiB", "--max-vcpus", "4", "--max-memory", "2GiB")  # fmt: skip
    assert (vm["power_state"], vm["vcpus"], vm["memory"]) == ("running", 2, GiB)
    assert (vm["max_vcpus"], vm["max_memory"], vm["disk_mode"]) == (4, 2 * GiB, "linked")
    assert [v["name"] for v in dv("vm", "list") if v["name"] == name] == [name]

    engine = engine_of(name)
    engine.run("busybox:latest", ["sleep", "100000"], name="first")
    cpus, memory = guest_sees(engine)
    assert cpus == 2 and 0.85 * GiB < memory <= GiB

    snap = dv("vm", "snapshot", name, "clean")
    assert snap["with_memory"] and snap["power_state"] == "running"
    engine.run("busybox:latest", ["sleep", "100000"], name="second")
    assert {"first", "second"} <= names_in(engine)

    reverted = dv("vm", "revert", name, "clean")
    assert reverted["power_state"] == "running"
    assert names_in(engine) == {"first"}
    assert [s["name"] for s in dv("vm", "snapshots", name)] == ["clean"]

    # The same engine through `dockvisor docker` on the host...
    assert "first" in run("docker", name, "ps").stdout
    out = run("docker", name, "exec", "first", "sh", "-c", "echo in-first; exit 4")
    assert out.returncode == 4 and out.stdout.strip() == "in-first"
    out = run("docker", name, "run", "--rm", "busybox:latest", "echo", "foreground")
    assert out.returncode == 0 and out.stdout.strip() == "foreground"
    # ...but not the stock docker CLI straight at the host port: it could not check which
    # VM answers there. `vm endpoint` says to go through the engine gateway instead
    # (tests/docker/test_docker_cli.py).
    said = dv_error("vm", "endpoint", name)
    assert "engine gateway" in said and "dockvisor serve" in said

    cloned = dv("vm", "clone", name, clone, "--start")
    assert cloned["power_state"] == "running" and cloned["disk_mode"] == "linked"
    clone_engine = engine_of(clone)
    assert clone_engine.endpoint.port != engine.endpoint.port
    # The clone has an engine certificate of its own, not a copy of its source's.
    assert clone_engine.endpoint.server_name != engine.endpoint.server_name
    assert names_in(clone_engine) == {"first"}
    assert clone_engine.info()["Name"] == clone  # the clone's own hostname

    resized = dv("vm", "set", name, "--vcpus", "3", "--memory", "1536MiB")
    assert resized["applied"] == {"vcpus": 3, "memory": 1536 * MiB} and resized["pending"] == {}
    cpus, memory = guest_sees(engine)
    assert cpus == 3 and 1.35 * GiB < memory <= 1.5 * GiB
    shown = dv("vm", "show", name)
    assert (shown["vcpus"], shown["memory"], shown["has_pending_changes"]) == (3, 1536 * MiB, False)

    assert files_of(name) and files_of(clone)
    dv("vm", "rm", "--force", name)
    dv("vm", "rm", "--force", clone)
    assert not {name, clone} & libvirt_domains()
    assert files_of(name) == [] and files_of(clone) == []
    assert not [v for v in dv("vm", "list") if v["name"] in (name, clone)]
    engine.close()
    clone_engine.close()


def test_bad_input_gets_one_clear_line_and_leaves_nothing(unique_name: str) -> None:
    name, other = unique_name, f"{unique_name}-o"
    dv("vm", "create", name, "--vcpus", "1", "--memory", "512MiB", "--no-start")
    dv("vm", "create", other, "--vcpus", "1", "--memory", "512MiB", "--no-start")
    dv("vm", "snapshot", other, "theirs")
    before_domains, before_files = libvirt_domains(), sorted(POOL_DIR.iterdir())

    assert "no VM named 'nope'" in dv_error("vm", "show", "nope")
    assert "no VM named 'nope'" in dv_error("vm", "start", "nope")
    assert "no template named 'nope'" in dv_error(
        "vm", "create", f"{name}-x", "--template", "nope", "--vcpus", "1", "--memory", "1GiB"
    )
    assert f"VM named '{name}' already exists" in dv_error(
        "vm", "create", name, "--vcpus", "1", "--memory", "1GiB"
    )
    assert "vCPUs must be at least 1" in dv_error(
        "vm", "create", f"{name}-x", "--vcpus", "0", "--memory", "1GiB", code=2
    )
    host = dv("host")
    too_many = str(host["max_vcpus_per_vm"] + 1)
    assert f"more than host {host['hostname']} allows" in dv_error(
        "vm", "create", f"{name}-x", "--vcpus", too_many, "--memory", "1GiB"
    )
    assert "is not a size" in dv_error(
        "vm", "create", f"{name}-x", "--vcpus", "1", "--memory", "lots", code=2
    )
    assert "needs a unit" in dv_error("vm", "set", name, "--memory", "1024", code=2)
    assert "not valid" in dv_error("vm", "create", "Bad_Name", "--vcpus", "1", "--memory", "1G",
                                   code=2)  # fmt: skip
    assert "it is stopped" in dv_error("vm", "stop", name)
    assert "it is stopped" in dv_error("vm", "kill", name)
    assert "no snapshot 'nope'" in dv_error("vm", "revert", name, "nope")
    message = dv_error("vm", "revert", name, "theirs")
    assert f"VM '{name}' has no snapshot 'theirs'" in message and other in message
    assert "already has a snapshot" in dv_error("vm", "snapshot", other, "theirs")
    assert "cannot connect to qemu:///nowhere" in dv_error(
        "--hypervisor", "qemu:///nowhere", "vm", "list"
    )
    assert "cannot connect to test+tcp://127.0.0.1:1/default" in dv_error(
        "--hypervisor", "test+tcp://127.0.0.1:1/default", "vm", "list"
    )
    assert libvirt_domains() == before_domains
    assert sorted(POOL_DIR.iterdir()) == before_files

    # A create that fails after its disk and domain exist removes both: here the guest's
    # Docker engine cannot answer within the one second we allow.
    doomed = f"{name}-d"
    message = dv_error("vm", "create", doomed, "--vcpus", "1", "--memory", "512MiB",
                       env={"DOCKVISOR_DOCKER_TIMEOUT": "1"})  # fmt: skip
    assert "did not answer within 1 s" in message
    assert doomed not in libvirt_domains() and files_of(doomed) == []

    dv("vm", "start", name, "--no-wait")
    assert "already running" in dv_error("vm", "start", name)
    assert "is running; stop it first" in dv_error("vm", "rm", name)
    dv("vm", "rm", "--force", name)
    dv("vm", "rm", other)
    assert not {name, other} & libvirt_domains()
    assert files_of(name) == [] and files_of(other) == []


def test_template_from_an_admins_own_disk_image(unique_name: str, tmp_path: Path) -> None:
    """`template add` with a disk, kernel and initrd: here the files of our own image,
    standing in for a cloud image with Docker and the guest agent installed."""
    image = Path(dv("image", "build")["image"]["directory"])
    template, name = f"{unique_name}-t", unique_name
    added = dv("template", "add", template, "--disk", str(image / "disk.qcow2"),
               "--kernel", str(image / "vmlinuz"), "--initrd", str(image / "initrd.img"),
               "--cmdline", "console=ttyS0 root=/dev/vda rw", "--description", "mine")  # fmt: skip
    assert added["docker_ready"] and not added["builtin"] and added["disk_size"] == 2 * GiB
    assert template in [t["name"] for t in dv("template", "list")]
    assert "already exists" in dv_error("template", "add", template, "--disk",
                                        str(image / "disk.qcow2"))  # fmt: skip
    assert "is not a file" in dv_error("template", "add", f"{template}2", "--disk",
                                       str(tmp_path / "missing.qcow2"), code=2)  # fmt: skip

    vm = dv("vm", "create", name, "--template", template, "--vcpus", "1", "--memory", "512MiB")
    assert vm["template"] == template and vm["power_state"] == "running"
    with engine_of(name) as engine:
        assert engine.ping()
    assert "is the base of VMs" in dv_error("template", "rm", template)
    dv("vm", "rm", "--force", name)
    dv("template", "rm", template)
    assert template not in [t["name"] for t in dv("template", "list")]
    assert not list(POOL_DIR.glob(f"template-{template}-*"))


def test_vms_started_at_once_each_get_a_docker_port_of_their_own(unique_name: str) -> None:
    """Three stopped VMs whose configurations name the same host port (as two creates
    racing for a free port could leave them), started at the same moment by three
    `dockvisor` processes: all three run, each forwarding its engine on its own port."""
    names = [f"{unique_name}-{i}" for i in range(3)]
    for name in names:
        dv("vm", "create", name, "--no-start", "--cold")
    conn = libvirt.open("qemu:///system")
    try:
        first = parse_domain_xml(conn.lookupByName(names[0]).XMLDesc(0)).config
        assert first.docker_host_port
        for name in names[1:]:
            xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            config = parse_domain_xml(xml).config
            conn.defineXML(
                with_network(xml, host_port=first.docker_host_port, nic_socket=config.nic_socket)
            )
        starts = [
            subprocess.Popen(
                [DOCKVISOR, "vm", "start", "--no-wait", name],
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            for name in names
        ]
        for proc in starts:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        ports = set()
        for name in names:
            dom = conn.lookupByName(name)
            assert dom.isActive(), f"{name} did not start"
            live = parse_domain_xml(dom.XMLDesc(0)).config.docker_host_port
            lasting = parse_domain_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).config
            assert live == lasting.docker_host_port, "the port moved in its lasting config too"
            ports.add(live)
        assert len(ports) == 3, f"two VMs share a port: {ports}"
    finally:
        conn.close()
    for name in names:
        dv("vm", "rm", "--force", name)
