"""A real dockvisor server on qemu:///system, for tests that need real VMs: the built-in
Docker-ready template, a control plane with its own data directory (and so its own PKI)
following the host, served by uvicorn on 127.0.0.1. The VMs a test names in `vms` are
removed when it ends, even if it fails (the session's cleanup by run prefix catches any
a killed run left)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from dockvisor.drivers.registry import open_driver
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.runtime import ControlPlane, Settings
from tests.api.conftest import serve

__all__ = ["RealServer", "real_server", "succeeded"]

URI = "qemu:///system"


@dataclass
class RealServer:
    cp: ControlPlane
    url: str
    vms: list[str] = field(default_factory=list)  # names to remove at the end


@contextmanager
def real_server(factory: pytest.TempPathFactory, label: str) -> Iterator[RealServer]:
    driver = open_driver(URI)
    template_service.build_builtin_template(driver)
    driver.close()
    data = factory.mktemp(label)
    settings = Settings(
        data_dir=data,
        database_url=f"sqlite:///{data / 'dockvisor.db'}",
        default_host=("local", URI),
        reconcile_every=30,
    )
    cp = ControlPlane(settings)
    cp.start()
    uv, thread, url = serve(cp)
    server = RealServer(cp, url)
    try:
        yield server
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()
        driver = open_driver(URI)
        for vm in server.vms:
            with suppress(Exception):  # the session's cleanup (run prefix) catches the rest
                vm_service.delete_vm(driver, vm, force=True)
        driver.close()


def succeeded(client: httpx.Client, task: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """The task (as the API gave it) once it has succeeded; AssertionError if it failed
    or is still going after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while task["state"] in ("pending", "running"):
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task['id']} still {task['state']} after {timeout} s")
        task = client.get(f"/tasks/{task['id']}/wait", params={"timeout": 10}).json()
    assert task["state"] == "succeeded", f"{task['kind']}: {task['error']}"
    return task
