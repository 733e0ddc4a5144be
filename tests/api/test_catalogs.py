"""Template catalogs through the server's API (test driver, SQLite and PostgreSQL): an
admin adds a signed catalog, searches it and pulls a template as a task; `GET /templates`
says when the catalog has a newer version and an update replaces the template without
touching VMs made from the old one. A corrupt download, a wrong key, an old index or a
developer's request register nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dockvisor.catalogs.publish import load_or_create_signing_key
from dockvisor.domain.model import TemplateSpec
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.services.catalogs import downloads_dir
from tests.api.conftest import NODE, TEMPLATE, Server
from tests.api.test_quotas import refused, run
from tests.catalog.published import Catalog, catalog_site


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with catalog_site(tmp_path) as found:
        yield found


def add(admin: httpx.Client, catalog: Catalog, name: str = "acme") -> httpx.Response:
    return admin.post("/catalogs", json={"name": name, "url": catalog.server.url,
                                         "public_key": catalog.public_key})  # fmt: skip


def templates(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in admin.get("/templates").json()}


def test_add_search_pull_and_update(server: Server, catalog: Catalog) -> None:
    admin = server.client("admin")
    added = add(admin, catalog)
    assert added.status_code == 201, added.text
    assert added.json()["newest"] == {"tiny": "1.0"}
    found = admin.get("/catalog-templates", params={"q": "tiny"}).json()
    assert found["problems"] == []
    (offer,) = found["templates"]
    assert (offer["catalog"], offer["name"], offer["version"]) == ("acme", "tiny", "1.0")
    assert offer["min_disk"] == 96 * MiB and offer["sizes"]["default_disk"] == 1 * GiB

    task = run(server, admin, admin.post("/templates/pull", json={"reference": "acme:tiny"}))
    assert task["result"]["version"] == "1.0" and task["kind"] == "template.pull"
    pulled = templates(admin)["tiny"]
    assert pulled["origin"]["catalog"] == "acme" and pulled["origin"]["version"] == "1.0"
    assert pulled["disk_size"] == 96 * MiB and pulled["newer_version"] is None

    # A VM from it gets the template's default disk; then a newer version appears.
    vm_task = run(
        server,
        admin,
        admin.post(
            "/vms",
            json={
                "name": "old",
                "template": "tiny",
                "vcpus": 1,
                "memory": 256 * MiB,
                "start": False,
            },
        ),
    )
    assert admin.get(f"/vms/{vm_task['object_id']}").json()["disk"] == 1 * GiB
    small = refused(
        admin.post("/vms", json={"name": "x", "template": "tiny", "vcpus": 1, "memory": 128 * MiB}),
        400,
        "invalid-input",
    )
    assert "needs at least 256MiB" in small  # fmt: skip

    run(server, admin, admin.post("/templates/tiny/warm", json={"spares": 1}))
    (kept,) = [s["name"] for s in admin.get("/spares").json() if s["template"] == "tiny"]

    catalog.publish("1.10")  # newer than 1.9 and 1.0: versions compare by numbers
    admin.get("/catalog-templates")
    assert templates(admin)["tiny"]["newer_version"] == "1.10"
    task = run(server, admin, admin.post("/templates/tiny/update", json={}))
    assert task["result"] == {"template": "tiny", "host": 1, "version": "1.10", "changed": True}
    assert templates(admin)["tiny"]["origin"]["version"] == "1.10"
    assert templates(admin)["tiny"]["newer_version"] is None
    driver = server.cp.hosts.driver(1)
    assert driver.get_vm("old").template == "tiny", "the old VM is untouched"
    # The kept spares are made again from the new version; the old one is gone.
    spares = [s for s in admin.get("/spares").json() if s["template"] == "tiny"]
    assert [(s["ready"], s["stale"]) for s in spares] == [(True, None)], spares
    assert spares[0]["name"] != kept and templates(admin)["tiny"]["spares_kept"] == 1
    again = run(server, admin, admin.post("/templates/tiny/update", json={}))
    assert again["result"]["changed"] is False

    taken = run_failed(
        server, admin, admin.post("/templates/pull", json={"reference": "acme:tiny"})
    )
    assert taken["error_code"] == "already-exists" and "--as NAME" in taken["error"]


def run_failed(server: Server, client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "failed", task
    return task


def test_a_corrupt_download_registers_nothing(server: Server, catalog: Catalog) -> None:
    admin = server.client("admin")
    assert add(admin, catalog).status_code == 201
    assert catalog.first is not None
    disk = catalog.first.files["disk"]
    catalog.server.serve(disk.path, b"\0" * disk.size)  # the right size, other bytes
    task = run_failed(server, admin, admin.post("/templates/pull", json={"reference": "acme:tiny"}))
    assert task["error_code"] == "catalog-error"
    assert "acme" in task["error"] and "disk.qcow2" in task["error"], task["error"]
    assert "tiny" not in templates(admin)
    assert not list(downloads_dir("acme").iterdir()), "a download that does not verify is removed"


def test_a_disk_that_names_a_host_file_is_refused(
    server: Server, catalog: Catalog, tmp_path: Path
) -> None:
    """A signed template whose qcow2 names a backing file (/etc/hostname) would give a
    VM's guest a host file: refused after the download, nothing registered."""
    admin = server.client("admin")
    assert catalog.first is not None
    hostile = tmp_path / "hostile.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname",
                    "-F", "raw", str(hostile)], check=True)  # fmt: skip
    catalog.swap_disk(catalog.first, hostile)
    assert add(admin, catalog).status_code == 201
    task = run_failed(server, admin, admin.post("/templates/pull", json={"reference": "acme:tiny"}))
    assert task["error_code"] == "catalog-error"
    assert "backing file" in task["error"] and "acme" in task["error"], task["error"]
    assert "tiny" not in templates(admin)
    assert not list(downloads_dir("acme").iterdir())


def test_catalog_refusals(server: Server, catalog: Catalog, tmp_path: Path) -> None:
    admin = server.client("admin")
    other_key = load_or_create_signing_key(tmp_path / "other.key")[1]
    wrong = admin.post("/catalogs", json={"name": "acme", "url": catalog.server.url,
                                          "public_key": other_key})  # fmt: skip
    detail = refused(wrong, 502, "catalog-error")
    assert "signature" in detail and "acme" in detail
    bad_key = admin.post("/catalogs", json={"name": "acme", "url": catalog.server.url,
                                            "public_key": "ed25519:nonsense"})  # fmt: skip
    assert bad_key.status_code == 400
    closed = admin.post("/catalogs", json={"name": "gone", "url": "http://127.0.0.1:9/",
                                           "public_key": catalog.public_key})  # fmt: skip
    assert "gone" in refused(closed, 502, "catalog-error")
    assert admin.get("/catalogs").json() == [], "nothing added"

    server.add_user("dev")
    dev = server.client("dev")
    assert add(dev, catalog).status_code == 403
    assert add(admin, catalog).status_code == 201
    for response in (
        dev.get("/catalogs"),
        dev.get("/catalog-templates"),
        dev.post("/templates/pull", json={"reference": "acme:tiny"}),
        dev.delete("/catalogs/acme"),
    ):
        assert response.status_code == 403, response.text
    bad_ref = admin.post("/templates/pull", json={"reference": "acme"})
    assert "CATALOG:NAME" in refused(bad_ref, 400, "invalid-input")


def test_a_pull_onto_every_host_is_all_or_nothing(
    server: Server, catalog: Catalog, tmp_path: Path
) -> None:
    admin = server.client("admin")
    node2 = server.cp.settings.data_dir / "node2.xml"
    node2.write_text(NODE)
    added = admin.post("/hosts", json={"name": "node2", "uri": f"test://{node2}"})
    assert added.status_code == 201, added.text
    assert add(admin, catalog).status_code == 201

    # Host 2 has a VM of the name: the template taken by host 1 is forgotten again.
    blank = server.cp.settings.data_dir / "blank.qcow2"
    spec = TemplateSpec(name=TEMPLATE, disk=str(blank), docker_port=None)
    server.cp.hosts.driver(2).register_template(spec)
    run(server, admin, admin.post("/vms", json={"name": "tiny", "template": TEMPLATE, "vcpus": 1,
                                                "memory": 256 * MiB, "start": False,
                                                "host_id": 2}))  # fmt: skip
    body = {"reference": "acme:tiny", "all_hosts": True}
    failed = run_failed(server, admin, admin.post("/templates/pull", json=body))
    assert failed["error_code"] == "already-exists", failed
    assert [t for t in admin.get("/templates").json() if t["name"] == "tiny"] == []

    task = run(server, admin, admin.post("/templates/pull", json={**body, "as_name": "tiny2"}))
    assert task["result"]["hosts"] == [1, 2]
    on = sorted(t["host_id"] for t in admin.get("/templates").json() if t["name"] == "tiny2")
    assert on == [1, 2]
