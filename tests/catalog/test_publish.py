"""Publishing templates into a catalog directory, then reading it back over HTTP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dockvisor.catalogs.client import CatalogClient
from dockvisor.catalogs.publish import load_or_create_signing_key, publish_template
from dockvisor.domain import catalog
from dockvisor.domain.catalog import CatalogTemplate
from dockvisor.domain.model import TemplateSizes
from dockvisor.errors import CatalogError, InvalidInput
from tests.catalog.server import CatalogServer

MiB = 1024**2


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A 64 MiB qcow2 with 3 MiB of data written into it."""
    path = tmp_path / "source.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    for pattern, offset in (("0x5a", "0"), ("0xa5", "10M"), ("0x11", "40M")):
        command = ["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 1M", str(path)]
        subprocess.run(command, check=True, capture_output=True)
    return path


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"not really a kernel\n" * 100)
    return path


@pytest.fixture
def initrd(tmp_path: Path) -> Path:
    path = tmp_path / "initrd.img"
    path.write_bytes(b"not really an initrd\n" * 50)
    return path


def publish(directory: Path, disk: Path, key: Path, **options: Any) -> CatalogTemplate:
    values: dict[str, Any] = {"name": "docker-debian", "version": "20261130_134501"}
    values.update(options)
    return publish_template(directory, disk=disk, signing_key=key, **values)


def catalog_files(directory: Path) -> dict[str, bytes]:
    return {
        path: (directory / path).read_bytes()
        for path in (catalog.INDEX_PATH, catalog.PRODUCTS_PATH)
        + tuple(f"{p}.sig" for p in (catalog.INDEX_PATH, catalog.PRODUCTS_PATH))
    }


def test_publish_writes_a_signed_catalog_that_reads_back(
    tmp_path: Path, disk: Path, kernel: Path, initrd: Path
) -> None:
    directory, key = tmp_path / "catalog", tmp_path / "keys" / "publisher.pem"
    steps: list[tuple[str, float]] = []
    published = publish(
        directory,
        disk,
        key,
        kernel=kernel,
        initrd=initrd,
        description="Debian 12 with Docker",
        cmdline="console=ttyS0 root=/dev/vda1 rw",
        docker_port=2376,
        docker_version="27.3.1",
        features=["config-drive", "qemu-agent"],
        sizes=TemplateSizes(1, 256 * MiB, 2, 1024 * MiB, 128 * MiB),
        progress=lambda step, fraction: steps.append((step, fraction)),
    )
    place = directory / "images/docker-debian/20261130_134501/x86_64"
    assert sorted(p.name for p in place.iterdir()) == ["disk.qcow2", "initrd.img", "vmlinuz"]
    assert published.files["disk"].path == f"{place.relative_to(directory)}/disk.qcow2"
    assert published.min_disk == 64 * MiB
    assert published.files["kernel"].size == kernel.stat().st_size
    # A standard qcow2 with the same content, compressed (smaller than the 3 MiB written).
    assert (place / "disk.qcow2").read_bytes()[:4] == b"QFI\xfb"
    assert published.files["disk"].size < 2 * MiB
    compare = ["qemu-img", "compare", str(disk), str(place / "disk.qcow2")]
    assert subprocess.run(compare, capture_output=True).returncode == 0
    # Progress: in order, ending at 1.0.
    fractions = [f for _, f in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(step == "compressing the disk" for step, _ in steps)
    # Read back over HTTP with the publisher's key: the same template.
    _, public = load_or_create_signing_key(key)
    with CatalogServer(directory) as server:
        templates, updated = CatalogClient("acme", server.url, public).fetch()
    assert templates == [published]
    assert updated >= published.published


def test_a_raw_disk_is_converted_to_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x00" * MiB + b"data" * 1000 + b"\x00" * (7 * MiB - 4000))
    published = publish(tmp_path / "c", raw, tmp_path / "key.pem")
    disk = tmp_path / "c" / published.files["disk"].path
    assert disk.read_bytes()[:4] == b"QFI\xfb"
    assert published.min_disk == 8 * MiB
    compare = ["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(disk)]
    assert subprocess.run(compare, capture_output=True).returncode == 0


def test_versions_and_templates_are_merged(tmp_path: Path, disk: Path) -> None:
    directory, key = tmp_path / "catalog", tmp_path / "key.pem"
    first = publish(directory, disk, key, version="20261130_134501")
    second = publish(directory, disk, key, version="20261201_080000")
    other = publish(directory, disk, key, name="alpine-docker", version="1")
    templates = catalog.parse_products("local", (directory / catalog.PRODUCTS_PATH).read_bytes())
    assert sorted(templates, key=lambda t: t.version) == [other, first, second]
    assert catalog.newest(templates, "docker-debian") == second
    index = json.loads((directory / catalog.INDEX_PATH).read_bytes())
    assert index["index"]["images"]["products"] == ["alpine-docker:x86_64", "docker-debian:x86_64"]


def test_a_published_version_is_not_published_again(tmp_path: Path, disk: Path) -> None:
    directory, key = tmp_path / "catalog", tmp_path / "key.pem"
    publish(directory, disk, key)
    before = catalog_files(directory)
    with pytest.raises(InvalidInput, match="'20261130_134501' .* is already in the catalog"):
        publish(directory, disk, key, description="again")
    assert catalog_files(directory) == before


def test_a_catalog_signed_by_another_key_is_refused(tmp_path: Path, disk: Path) -> None:
    directory = tmp_path / "catalog"
    publish(directory, disk, tmp_path / "first.pem")
    before = catalog_files(directory)
    with pytest.raises(InvalidInput, match="is not signed by the key .*second.pem"):
        publish(directory, disk, tmp_path / "second.pem", version="2")
    assert catalog_files(directory) == before
    assert not (directory / "images/docker-debian/2").exists()


def test_a_failed_publish_leaves_the_catalog_as_it_was(tmp_path: Path, disk: Path) -> None:
    directory, key = tmp_path / "catalog", tmp_path / "key.pem"
    publish(directory, disk, key)
    before = catalog_files(directory)
    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + b"\x00" * 20 + (64 * MiB).to_bytes(8, "big") + b"junk" * 99)
    with pytest.raises(InvalidInput, match="qemu-img could not compress the disk"):
        publish(directory, broken, key, name="broken", version="1")
    assert catalog_files(directory) == before
    assert sorted(p.name for p in (directory / "images").iterdir()) == ["docker-debian"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"name": "Bad_Name"}, "template name"),
        ({"version": "../1"}, "version"),
        ({"arch": "x86 64"}, "architecture"),
        ({"features": ["Config Drive"]}, "feature"),
        ({"docker_port": 0}, "port"),
        ({"sizes": TemplateSizes(default_disk=MiB)}, "default disk"),
        ({"initrd": Path("/etc/hostname")}, "initrd needs a kernel"),
        ({"kernel": Path("/nonexistent/vmlinuz")}, "is not a file"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(
    tmp_path: Path, disk: Path, options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidInput, match=expected):
        publish(tmp_path / "catalog", disk, tmp_path / "key.pem", **options)
    assert not (tmp_path / "catalog" / "images").exists()


def test_the_signing_key_is_made_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "publisher.pem"
    private, public = load_or_create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert load_or_create_signing_key(path) == (private, public)
    signature = catalog.sign(private, b"data")
    catalog.verify("c", "f", public, b"data", signature)
    path.chmod(0o644)
    with pytest.raises(InvalidInput, match="can be read by others .*chmod 600"):
        load_or_create_signing_key(path)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(InvalidInput, match="not an unencrypted PEM ed25519 private key"):
        load_or_create_signing_key(path)


def test_a_tampered_catalog_is_refused_by_its_readers(tmp_path: Path, disk: Path) -> None:
    directory, key = tmp_path / "catalog", tmp_path / "key.pem"
    publish(directory, disk, key)
    _, public = load_or_create_signing_key(key)
    products = directory / catalog.PRODUCTS_PATH
    products.write_bytes(products.read_bytes().replace(b'"min_vcpus": 1', b'"min_vcpus": 2'))
    with CatalogServer(directory) as server, pytest.raises(CatalogError) as caught:
        CatalogClient("acme", server.url, public).fetch()
    assert "catalog 'acme': the signature of streams/v1/images.json does not match" in str(
        caught.value
    )
