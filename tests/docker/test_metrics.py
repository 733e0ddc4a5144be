"""A real VM's graphs and its containers' CPU and memory: a busy container shows on both.

The package's server samples every 10 s on its own; these tests take rounds themselves
(`cp.metrics.sample()`, what the sampler's thread calls) so as not to wait for it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from dockvisor.domain.sizes import MiB
from tests.docker.conftest import DockerStack

pytestmark = pytest.mark.vm

BUSY = ["sh", "-c", "while :; do :; done"]  # one CPU, flat out


@contextmanager
def busy_container(stack: DockerStack) -> Iterator[str]:
    """A container keeping one of the VM's two vCPUs busy; removed afterwards."""
    name = f"busy-{secrets.token_hex(3)}"
    with stack.client("dev") as dev:
        created = dev.post(
            f"{stack.docker()}/containers",
            json={"image": "busybox:latest", "name": name, "command": BUSY},
        )
        assert created.status_code == 201, created.text
        try:
            yield name
        finally:
            dev.delete(f"{stack.docker()}/containers/{name}", params={"force": True})


@pytest.fixture
def busy(stack: DockerStack) -> Iterator[str]:
    with busy_container(stack) as name:
        yield name


def latest(series: dict[str, list[Any]]) -> dict[str, Any]:
    return {name: values[-1] for name, values in series.items()}


def cpu_over(stack: DockerStack, seconds: float) -> dict[str, Any]:
    """The VM's point for the next `seconds`, as the viewer reads it."""
    metrics = stack.cp.metrics
    with stack.client("viewer") as viewer:
        metrics.sample()
        time.sleep(seconds)
        assert viewer.get(f"{stack.docker()}/images").status_code == 200  # the engine's card
        metrics.sample()
        response = viewer.get(f"/vms/{stack.vm_id}/metrics", params={"minutes": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["period"] == stack.cp.settings.metrics_every
    return latest(body["series"])


def test_a_busy_container_shows_in_the_vms_graphs(stack: DockerStack) -> None:
    with busy_container(stack):
        time.sleep(1)
        point = cpu_over(stack, 4)
    # One of the VM's two vCPUs busy: up to half of the VM, much less on a crowded host
    # (QEMU's threads share the host's CPUs with whatever else runs there), never nothing.
    assert 5 <= point["cpu_percent"] <= 100, point
    assert point["memory_total"] == 1024 * MiB
    assert 16 * MiB < point["memory_used"] < point["memory_total"], point
    for name in ("disk_read", "disk_write", "net_rx", "net_tx"):
        assert isinstance(point[name], float) and point[name] >= 0, (name, point)
    assert point["net_rx"] + point["net_tx"] > 0, point  # the engine's answers went out


def test_a_busy_containers_cpu_and_memory(stack: DockerStack, busy: str) -> None:
    with stack.client("viewer") as viewer:
        one = viewer.get(f"{stack.docker()}/containers/{busy}/usage")
        assert one.status_code == 200, one.text
        usage = one.json()
        assert usage["name"] == busy and len(usage["id"]) == 64
        assert 20 <= usage["cpu_percent"] <= 200, usage  # of one CPU, as docker stats counts
        assert usage["online_cpus"] == 2
        assert 0 < usage["memory_used"] < usage["memory_limit"] <= 1024 * MiB, usage
        every = viewer.get(f"{stack.docker()}/usage")
        assert every.status_code == 200, every.text
        listed = {c["name"]: c for c in every.json()}
        assert listed[busy]["cpu_percent"] >= 20, listed
    with stack.client("vmonly") as vm_only:  # VM.View: the graphs, not the containers
        refused = vm_only.get(f"{stack.docker()}/containers/{busy}/usage")
        assert refused.status_code == 403 and "Docker.View" in refused.json()["detail"]
        assert vm_only.get(f"/vms/{stack.vm_id}/metrics").status_code == 200
    with stack.client("outsider") as outsider:
        assert outsider.get(f"/vms/{stack.vm_id}/metrics").status_code == 404


def test_a_stopped_vm_has_no_running_graphs(stack: DockerStack) -> None:
    stack.cp.metrics.sample()
    with stack.client("admin") as admin:
        body = admin.get(f"/vms/{stack.stopped_vm_id}/metrics").json()
        assert body["series"]["time"] == []
        refused = admin.get(f"{stack.docker(stack.stopped_vm_id)}/usage")
        assert refused.status_code == 503, refused.text  # its engine runs only while it runs
