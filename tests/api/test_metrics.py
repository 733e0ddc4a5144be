"""VM metrics through the API, on libvirt's test driver: who may read a VM's graphs, their
shape, and the sampler behind them (it samples without anyone looking, stops at once,
forgets deleted VMs, and says in the log when a host cannot be read)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockvisor.domain.metrics import SERIES_FIELDS
from dockvisor.domain.model import Capability, TemplateSpec
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.base import HypervisorDriver
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.errors import HypervisorUnreachable
from dockvisor.services.runtime import ControlPlane, Settings
from dockvisor.store.models import RoleRow
from tests.api.conftest import NODE, TEMPLATE, Server, assert_problem, create_vm, serve


def take_samples(server: Server, count: int = 2) -> None:
    for _ in range(count):
        time.sleep(0.05)  # the test driver's CPU time runs with the clock
        server.cp.metrics.sample()


def test_a_viewer_reads_the_graphs_of_the_last_hour(sqlite_server: Server) -> None:
    server = sqlite_server
    admin = server.client("admin")
    vm = create_vm(server, admin, "graphs")
    viewer = server.add_user("viewer", role="Viewer", path=f"/vms/{vm}")
    take_samples(server, 3)

    response = viewer.get(f"/vms/{vm}/metrics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == 10.0 and list(body["series"]) == list(SERIES_FIELDS)
    got = body["series"]
    assert all(len(values) == 3 for values in got.values()), got
    times = got["time"]
    assert times == sorted(times) and time.time() - 60 < times[0] <= times[-1] <= time.time()
    # The first sample has no rate; the next ones do. The test driver's CPU time runs with
    # the clock: one CPU busy, the VM's one vCPU full.
    cpu, disk = got["cpu_percent"], got["disk_read"][1:] + got["disk_write"][1:]
    assert cpu[0] is None and cpu[1:] == [pytest.approx(100, abs=1)] * 2
    assert got["memory_total"] == [512 * MiB] * 3
    assert all(isinstance(v, float) and v >= 0 for v in disk)
    assert got["net_rx"] == [None] * 3  # its VMs have no network card
    assert admin.get(f"/vms/{vm}/metrics", params={"minutes": 1}).json() == body


def test_a_vm_one_cannot_view_has_no_graphs(sqlite_server: Server) -> None:
    server = sqlite_server
    admin = server.client("admin")
    vm = create_vm(server, admin, "hidden")
    take_samples(server)
    outsider = server.add_user("outsider")
    blocked = server.add_user("blocked", role="NoAccess", path=f"/vms/{vm}")
    for client in (outsider, blocked):
        body = assert_problem(client.get(f"/vms/{vm}/metrics"), 404, "not-found")
        assert body["detail"] == f"no VM {vm}"  # exactly as for a VM that does not exist
        assert_problem(client.get(f"/vms/{vm}/docker/usage"), 404, "not-found")
    assert_problem(admin.get("/vms/no-such-vm/metrics"), 404, "not-found")
    for minutes in (0, 61, "x"):
        response = admin.get(f"/vms/{vm}/metrics", params={"minutes": minutes})
        assert response.status_code == 422, response.text


def test_container_usage_needs_docker_view_and_an_engine(sqlite_server: Server) -> None:
    server = sqlite_server
    admin = server.client("admin")
    vm = create_vm(server, admin, "engineless")
    viewer = server.add_user("viewer", role="Viewer", path=f"/vms/{vm}")
    with server.cp.db.session() as session:
        session.add(RoleRow(name="VmOnly", privileges=["VM.View"], builtin=False, description=""))
    vm_only = server.add_user("vmonly", role="VmOnly", path=f"/vms/{vm}")
    for path in (f"/vms/{vm}/docker/usage", f"/vms/{vm}/docker/containers/web/usage"):
        refused = assert_problem(vm_only.get(path), 403, "forbidden")
        assert "Docker.View" in refused["detail"]
        # The test driver's VMs have no Docker engine: the check passed, the engine is absent.
        assert_problem(viewer.get(path), 400, "unsupported")
    assert viewer.get(f"/vms/{vm}/metrics").status_code == 200
    openapi = admin.get("/openapi.json").json()["paths"]
    assert openapi["/api/v1/vms/{vm_id}/metrics"]["get"]["x-dockvisor-privilege"]
    assert "metrics" in admin.get("").json()["extensions"]


def test_graphs_of_deleted_vms_are_dropped(sqlite_server: Server) -> None:
    server = sqlite_server
    admin = server.client("admin")
    kept, gone = create_vm(server, admin, "kept"), create_vm(server, admin, "gone")
    take_samples(server)
    assert server.cp.metrics.history_count() == 2
    response = admin.delete(f"/vms/{gone}", params={"force": True})
    assert server.wait(admin, response.json())["state"] == "succeeded"
    take_samples(server, 1)
    assert server.cp.metrics.history_count() == 1
    assert len(admin.get(f"/vms/{kept}/metrics").json()["series"]["time"]) == 3


# -- the sampler as the server runs it ----------------------------------------------------


class Slow:
    """The real test-driver host, whose counters take `delay` seconds to read, or fail as
    an unreachable connection does while `pulled`."""

    def __init__(self, driver: HypervisorDriver) -> None:
        self._driver = driver
        self.capabilities = driver.capabilities
        self.delay = 0.0
        self.pulled = False
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    def usage_counters(self) -> dict[str, Any]:
        self.reads += 1
        if self.pulled:
            raise HypervisorUnreachable("reading counters: Cannot recv data: Connection reset")
        time.sleep(self.delay)
        return self._driver.usage_counters()


@pytest.fixture
def sampled(tmp_path: Path) -> Iterator[tuple[Server, list[Slow]]]:
    """A server that follows its hosts (inventory and metrics) and samples every 0.2 s."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    hosts: list[Slow] = []

    def factory(uri: str, credentials: object = None) -> HypervisorDriver:
        host = Slow(LibvirtDriver(uri))
        hosts.append(host)
        return host

    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'dockvisor.db'}",
        default_host=("local", f"test://{node}"),
        reconcile_every=3600,
        metrics_every=0.2,
        test_host_files=tmp_path,
    )
    cp = ControlPlane(settings, driver_factory=factory)
    disk = tmp_path / "blank.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    cp.start()
    cp.hosts.driver(1).register_template(
        TemplateSpec(name=TEMPLATE, disk=str(disk), docker_port=None)
    )
    uv, thread, url = serve(cp)
    server = Server(cp, url)
    server.add_user("admin", role="Admin")
    try:
        yield server, hosts
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()


def wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)
    return value


def test_the_server_samples_without_anyone_looking_and_stops_at_once(
    sampled: tuple[Server, list[Slow]],
) -> None:
    server, hosts = sampled
    admin = server.client("admin")
    vm = create_vm(server, admin, "watched")
    assert server.cp.metrics.running
    assert Capability.METRICS in server.cp.hosts.driver(1).capabilities

    def series() -> dict[str, list[Any]]:
        body = admin.get(f"/vms/{vm}/metrics").json()
        assert body["period"] == 0.2
        return dict(body["series"])

    def rates() -> bool:
        return len([v for v in series()["cpu_percent"] if v is not None]) >= 2

    wait_for(rates)
    # Stopped: its graphs end with a gap; started again, they go on after it.
    stop = admin.put(f"/vms/{vm}/state", json={"action": "kill"})
    assert server.wait(admin, stop.json())["state"] == "succeeded"
    wait_for(lambda: series()["cpu_percent"][-1] is None and series()["memory_total"][-1] is None)
    start = admin.put(f"/vms/{vm}/state", json={"action": "start"})
    assert server.wait(admin, start.json())["state"] == "succeeded"
    wait_for(lambda: series()["cpu_percent"][-1] is not None)
    got = series()
    gaps = [i for i, total in enumerate(got["memory_total"]) if total is None]
    assert len(gaps) == 1 and 0 < gaps[0] < len(got["time"]) - 2, got
    assert got["time"][gaps[0] + 1] - got["time"][gaps[0] - 1] > 0.5  # the VM was off

    # A round under way (a hypervisor slow to answer) does not hold the stop.
    hosts[0].delay = 3.0
    reads = hosts[0].reads
    wait_for(lambda: hosts[0].reads > reads)
    started = time.monotonic()
    server.cp.metrics.stop()
    assert time.monotonic() - started < 1.2
    wait_for(lambda: not server.cp.metrics.running)  # once that round has returned
    reads = hosts[0].reads
    time.sleep(0.5)
    assert hosts[0].reads == reads  # and no round after it


def test_a_host_that_cannot_be_read_is_logged_once_and_its_recovery_too(
    sampled: tuple[Server, list[Slow]], caplog: pytest.LogCaptureFixture
) -> None:
    server, hosts = sampled
    create_vm(server, server.client("admin"), "logged")

    def logged(event: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == event]

    with caplog.at_level(logging.INFO, logger="dockvisor"):
        hosts[0].pulled = True
        reads = hosts[0].reads
        wait_for(lambda: hosts[0].reads > reads + 3)  # the sampler tried again and again
        failed = logged("metrics.read-failed")
        assert len(failed) == 1, caplog.records
        assert failed[0].levelname == "WARNING"
        assert failed[0].__dict__["host"] == 1
        assert "Connection reset" in failed[0].__dict__["error"]
        assert server.cp.hosts.health(1).state == "unreachable"
        hosts[0].pulled = False
        wait_for(lambda: logged("metrics.read-recovered"))
    assert server.cp.hosts.health(1).state == "connected"
    assert len(logged("metrics.read-recovered")) == 1 and len(logged("metrics.read-failed")) == 1

    # An adapter that declares no METRICS is not asked; that is said once, not as a failure.
    with caplog.at_level(logging.INFO, logger="dockvisor"):
        hosts[0].capabilities = server.cp.hosts.driver(1).capabilities & ~Capability.METRICS
        reads = hosts[0].reads
        wait_for(lambda: logged("metrics.unsupported"))
        server.cp.metrics.sample()
        assert server.cp.metrics.sample() == 0 and hosts[0].reads <= reads + 1
    assert len(logged("metrics.unsupported")) == 1 and len(logged("metrics.read-failed")) == 1


# -- the CLI ---------------------------------------------------------------------------------

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))


def dockvisor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKVISOR, *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def test_the_cli_prints_the_latest_point(sqlite_server: Server) -> None:
    server = sqlite_server
    vm = create_vm(server, server.client("admin"), "printed")
    server.add_user("viewer", role="Viewer", path=f"/vms/{vm}")
    env = {"DOCKVISOR_SERVER": server.url, "DOCKVISOR_TOKEN": server.tokens["viewer"]}
    early = dockvisor("vm", "metrics", "printed", **env)
    assert early.returncode == 1 and "no recent sample" in early.stderr
    take_samples(server, 2)
    shown = dockvisor("--json", "vm", "metrics", "printed", **env)
    assert shown.returncode == 0, shown.stderr
    point = json.loads(shown.stdout)
    assert point["cpu_percent"] == pytest.approx(100, abs=1) and point["period"] == 10
    assert point["memory_total"] == 512 * MiB
    text = dockvisor("vm", "metrics", "printed", **env).stdout
    assert re.search(r"^cpu +(100\.0|99\.\d)% of its vCPUs$", text, re.MULTILINE), text
    assert "memory   512MiB" in text and "network  received -, sent -" in text
    server.add_user("nobody")
    env["DOCKVISOR_TOKEN"] = server.tokens["nobody"]
    hidden = dockvisor("vm", "metrics", "printed", **env)
    assert hidden.returncode == 1 and "no VM named 'printed'" in hidden.stderr


def test_the_cli_measures_on_the_host_itself() -> None:
    # test:///default has a running VM called "test", with a card and a balloon.
    shown = dockvisor("--hypervisor", "test:///default", "--json", "vm", "metrics", "test",
                      "--seconds", "0.5")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    point = json.loads(shown.stdout)
    assert point["period"] == 0.5 and point["cpu_percent"] > 0 and point["net_rx"] > 0
    assert 0 < point["memory_used"] <= point["memory_total"]
