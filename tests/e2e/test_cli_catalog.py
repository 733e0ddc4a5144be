"""A template catalog end to end, through the `dockvisor` command on qemu:///system: the
built-in template published into a catalog directory (signed), served by a local HTTP
server, added, searched, pulled through a connection cut half-way (the second pull
resumes with a Range request), and a VM made from the pulled template whose Docker
engine answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dockvisor.domain.sizes import GiB
from tests.catalog.server import CatalogServer
from tests.e2e.test_cli_disks import about, filesystem
from tests.e2e.test_cli_lifecycle import dv, dv_error, engine_of, run

pytestmark = pytest.mark.vm


@dataclass
class Published:
    server: CatalogServer
    public_key: str
    template: dict[str, Any]


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Published]:
    root = tmp_path_factory.mktemp("catalog")
    directory, key = root / "site", root / "publisher.key"
    data = dv("template", "publish", "docker-ready", "--to", str(directory),
              "--key", str(key), "--version", "1")  # fmt: skip
    assert key.stat().st_mode & 0o077 == 0, "the signing key is private"
    assert (directory / "streams/v1/index.json").is_file()
    assert (directory / "streams/v1/images.json.sig").is_file()
    with CatalogServer(directory) as server:
        yield Published(server, data["public_key"], data["template"])


def test_publish_search_pull_with_resume_and_boot(
    published: Published, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # this test's catalogs
    offered = published.template
    assert offered["docker_version"] and "config-drive" in offered["features"]
    assert offered["min_disk"] == 2 * GiB and offered["sizes"]["default_disk"] == 4 * GiB

    added = dv("template", "catalog", "add", "acme", published.server.url,
               "--key", published.public_key)  # fmt: skip
    assert added["newest"] == {"docker-ready": "1"}
    found = dv("template", "search", "docker")
    assert [(t["catalog"], t["name"], t["version"]) for t in found["templates"]] == [
        ("acme", "docker-ready", "1")
    ]
    shown = run("template", "search").stdout
    assert "acme:docker-ready" in shown and "DOWNLOAD" in shown, shown

    template = f"{unique_name}-tpl"
    disk = next(f for f in _files(published) if f.endswith("disk.qcow2"))
    size = (published.server.directory / disk).stat().st_size
    published.server.cut(disk, after=size // 3)
    error = dv_error("template", "pull", "acme:docker-ready", "--as", template)
    assert "acme" in error and "resume" in error, error
    assert template not in {t["name"] for t in dv("template", "list")}, "nothing registered"

    pulled = dv("template", "pull", "acme:docker-ready", "--as", template)
    assert pulled == {"template": template, "version": "1"}
    disk_requests = [r for path, r in published.server.requests if path == disk]
    assert disk_requests[0] is None and disk_requests[-1] == f"bytes={size // 3}-", (
        "the second pull resumed where the cut left it"
    )
    assert published.server.sent[disk] < size * 1.1, "the file was not downloaded twice"
    listed = {t["name"]: t for t in dv("template", "list")}
    published_sha = hashlib.sha256((published.server.directory / disk).read_bytes()).hexdigest()
    assert listed[template]["origin"] == {
        "catalog": "acme",
        "product": "docker-ready",
        "version": "1",
        "sha256": published_sha,
    }
    assert listed[template]["newer_version"] is None

    vm = dv("vm", "create", unique_name, "--template", template, "--vcpus", "1",
            "--memory", "1GiB", "--disk", "3GiB")  # fmt: skip
    assert vm["template"] == template and vm["disk_size"] == 3 * GiB
    with engine_of(unique_name) as engine:
        assert engine.ping()
        fs, _ = filesystem(engine)
        low, high = about(3 * GiB)
        assert low < fs <= high
    dv("vm", "rm", "--force", unique_name)
    dv("template", "rm", template)


def _files(published: Published) -> list[str]:
    root = published.server.directory
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
