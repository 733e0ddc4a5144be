"""A host that stops answering shows as such, and the background loops say why in the
log instead of swallowing the error (issue 8, item 18)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from dockvisor.drivers.base import HypervisorDriver
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.errors import HypervisorUnreachable
from dockvisor.log import JsonFormatter
from dockvisor.services.runtime import ControlPlane, Settings
from tests.api.conftest import NODE, Server, serve


class Unplugged:
    """The real test-driver host, with a cable we can pull: while `pulled`, every call
    fails as an unreachable libvirt connection does."""

    def __init__(self, driver: HypervisorDriver) -> None:
        self._driver = driver
        self.pulled = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._driver, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.pulled:
                raise HypervisorUnreachable(f"{name}: Cannot recv data: Connection reset")
            return attribute(*args, **kwargs)

        return call


def test_a_host_that_stops_answering_is_shown_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    hosts: list[Unplugged] = []

    def factory(uri: str, credentials: object = None) -> HypervisorDriver:
        host = Unplugged(LibvirtDriver(uri))
        hosts.append(host)
        return host  # type: ignore[return-value]

    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'dockvisor.db'}",
        default_host=("local", f"test://{node}"),
        reconcile_every=3600,
        test_host_files=tmp_path,
    )
    cp = ControlPlane(settings, driver_factory=factory)
    cp.start(follow=False)
    uv, thread, url = serve(cp)
    server = Server(cp, url)
    admin = server.add_user("admin", role="Admin")
    try:

        def states() -> list[str]:
            response = admin.get("/hosts")
            assert response.status_code == 200, response.text
            return [h["state"] for h in response.json()]

        assert states() == ["connected"]
        hosts[0].pulled = True
        with caplog.at_level(logging.WARNING, logger="dockvisor"):
            report = cp.inventory.reconcile()
        assert report.unreachable == ["1"]
        assert states() == ["unreachable"]
        logged = [r for r in caplog.records if r.getMessage() == "host.unreachable"]
        assert logged, caplog.records
        line = json.loads(JsonFormatter().format(logged[0]))
        assert line["host"] == 1 and "Connection reset" in line["error"]
        assert line["level"] == "warning" and line["event"] == "host.unreachable"

        hosts[0].pulled = False
        cp.inventory.reconcile()
        assert states() == ["connected"]
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()
