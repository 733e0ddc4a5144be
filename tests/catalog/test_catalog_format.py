"""The catalog's format, keys and rules (domain.catalog): no I/O."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dockvisor.domain import catalog
from dockvisor.domain.catalog import CatalogFile, CatalogTemplate
from dockvisor.domain.model import TemplateSizes
from dockvisor.errors import CatalogError, InvalidInput

UPDATED = datetime(2026, 11, 30, 13, 45, 1, tzinfo=UTC)
GiB = 1024**3


def template(
    name: str = "docker-debian", version: str = "20261130_134501", **changes: Any
) -> CatalogTemplate:
    base = f"images/{name}/{version}/x86_64"
    files = {
        "disk": CatalogFile("disk", f"{base}/disk.qcow2", "a" * 64, 123456),
        "kernel": CatalogFile("kernel", f"{base}/vmlinuz", "b" * 64, 9000),
        "initrd": CatalogFile("initrd", f"{base}/initrd.img", "c" * 64, 8000),
    }
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "arch": "x86_64",
        "description": "Debian 12 with Docker",
        "files": files,
        "cmdline": "console=ttyS0 root=/dev/vda1 rw",
        "docker_port": 2376,
        "docker_version": "27.3.1",
        "features": ("config-drive", "qemu-agent"),
        "sizes": TemplateSizes(1, 512 * 1024**2, 2, GiB, 8 * GiB),
        "min_disk": 4 * GiB,
        "published": UPDATED,
    }
    fields.update(changes)
    return CatalogTemplate(**fields)


def products_doc(*templates: CatalogTemplate) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(catalog.render_products(list(templates), UPDATED))
    return doc


def parse(doc: dict[str, Any]) -> list[CatalogTemplate]:
    return catalog.parse_products("acme", json.dumps(doc).encode())


def test_products_round_trip_with_every_field() -> None:
    minimal = template(
        "plain",
        "1",
        files={"disk": CatalogFile("disk", "images/plain/1/x86_64/disk.qcow2", "d" * 64, 1)},
        cmdline=None,
        docker_port=None,
        docker_version=None,
        features=(),
        sizes=TemplateSizes(),
        description="",
    )
    templates = [template(), template(version="20261201_000000"), minimal]
    parsed = catalog.parse_products("acme", catalog.render_products(templates, UPDATED))
    assert sorted(parsed, key=lambda t: (t.name, t.version)) == sorted(
        templates, key=lambda t: (t.name, t.version)
    )


def test_products_are_deterministic_and_readable_as_plain_simplestreams() -> None:
    a, b = template(), template("other", "2")
    assert catalog.render_products([a, b], UPDATED) == catalog.render_products([b, a], UPDATED)
    doc = products_doc(a)
    assert doc["format"] == "products:1.0"
    assert doc["datatype"] == "image-downloads"
    assert doc["content_id"] == "images"
    assert doc["updated"] == "Mon, 30 Nov 2026 13:45:01 +0000"
    product = doc["products"]["docker-debian:x86_64"]
    assert (product["arch"], product["aliases"], product["release"]) == (
        "x86_64",
        "docker-debian",
        "docker-debian",
    )
    item = product["versions"]["20261130_134501"]["items"]["disk.qcow2"]
    assert item == {
        "ftype": "disk-kvm.img",
        "path": "images/docker-debian/20261130_134501/x86_64/disk.qcow2",
        "sha256": "a" * 64,
        "size": 123456,
    }
    assert product["versions"]["20261130_134501"]["dockvisor"]["docker_version"] == "27.3.1"


def test_index_round_trip() -> None:
    data = catalog.render_index(catalog.PRODUCTS_PATH, ["b:x86_64", "a:x86_64"], UPDATED)
    doc = json.loads(data)
    assert doc["format"] == "index:1.0"
    entry = doc["index"]["images"]
    assert entry["path"] == "streams/v1/images.json"
    assert entry["products"] == ["a:x86_64", "b:x86_64"]
    assert entry["datatype"] == "image-downloads" and entry["format"] == "products:1.0"
    found = catalog.parse_index("acme", data)
    assert found == catalog.CatalogIndex(catalog.PRODUCTS_PATH, ("a:x86_64", "b:x86_64"), UPDATED)


def test_products_of_another_time_than_the_index_are_refused() -> None:
    data = catalog.render_products([template()], UPDATED)
    assert catalog.parse_products("acme", data, updated=UPDATED)
    with pytest.raises(CatalogError, match="a mix of old and new"):
        catalog.parse_products("acme", data, updated=UPDATED.replace(second=2))


def bad_products() -> list[tuple[str, Any]]:
    """(what is expected in the message, a change to a valid products document)."""

    def item(**values: Any) -> Any:
        def change(doc: dict[str, Any]) -> None:
            version = doc["products"]["docker-debian:x86_64"]["versions"]["20261130_134501"]
            version["items"]["disk.qcow2"].update(values)

        return change

    def meta(**values: Any) -> Any:
        def change(doc: dict[str, Any]) -> None:
            version = doc["products"]["docker-debian:x86_64"]["versions"]["20261130_134501"]
            version["dockvisor"].update(values)

        return change

    def top(**values: Any) -> Any:
        return lambda doc: doc.update(values)

    return [
        ("'format'", top(format="products:2.0")),
        ("'datatype'", top(datatype="image-ids")),
        ("'products'", top(products=[])),
        ("'updated'", top(updated="yesterday")),
        ("'sha256'", item(sha256="A" * 64)),
        ("'sha256'", item(sha256="a" * 63)),
        ("'size'", item(size=0)),
        ("'size'", item(size=-5)),
        ("'size'", item(size=True)),
        ("'size'", item(size="12")),
        ("'path'", item(path="../x")),
        ("'path'", item(path="images/../../etc/passwd")),
        ("'path'", item(path="/etc/passwd")),
        ("'path'", item(path="http://elsewhere.example/disk")),
        ("'path'", item(path="images\\disk")),
        ("'path'", item(path="images/.hidden")),
        ("'path'", item(path="images//disk")),
        ("no disk item", item(ftype="disk1.img")),
        ("'min_disk'", meta(min_disk=0)),
        ("'features'", meta(features=["Not Valid"])),
        ("'docker_port'", meta(docker_port=70000)),
        ("'published'", meta(published="2026-11-30")),
        ("'description'", meta(description="two\nlines")),
        ("default vCPUs", meta(sizes={"min_vcpus": 4, "min_memory": 0, "default_vcpus": 2})),
        ("'dockvisor'", meta_removed()),
    ]


def meta_removed() -> Any:
    def change(doc: dict[str, Any]) -> None:
        del doc["products"]["docker-debian:x86_64"]["versions"]["20261130_134501"]["dockvisor"]

    return change


@pytest.mark.parametrize(("expected", "change"), bad_products())
def test_malformed_products_are_refused_naming_catalog_and_file(expected: str, change: Any) -> None:
    doc = products_doc(template())
    change(doc)
    with pytest.raises(CatalogError) as caught:
        parse(doc)
    message = str(caught.value)
    assert "catalog 'acme'" in message and "streams/v1/images.json" in message
    assert expected in message


@pytest.mark.parametrize(
    "data",
    [b"", b"{not json", b"[]", b'"text"', b"\xff\xfe", b'{"format": "products:1.0"}'],
)
def test_products_that_are_not_a_products_document_are_refused(data: bytes) -> None:
    with pytest.raises(CatalogError, match=r"catalog 'acme': streams/v1/images.json is not valid"):
        catalog.parse_products("acme", data)


def test_bad_product_names_and_versions_are_refused() -> None:
    for product, version in (("Bad Name:x86_64", "1"), ("noarch", "1"), ("ok:x86_64", "../1")):
        doc = products_doc(template())
        entry = doc["products"].pop("docker-debian:x86_64")
        entry["arch"] = product.partition(":")[2]
        entry["versions"] = {version: entry["versions"]["20261130_134501"]}
        doc["products"][product] = entry
        with pytest.raises(CatalogError, match="catalog 'acme'"):
            parse(doc)


def test_items_for_other_readers_are_ignored() -> None:
    doc = products_doc(template())
    items = doc["products"]["docker-debian:x86_64"]["versions"]["20261130_134501"]["items"]
    items["incus.tar.xz"] = {"ftype": "incus.tar.xz", "path": "x", "sha256": "e" * 64, "size": 1}
    assert parse(doc) == [template()]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(format="index:2.0"), "'format'"),
        (lambda d: d["index"].pop("images"), "index 'images'"),
        (lambda d: d["index"]["images"].update(path="../images.json"), "'path'"),
        (lambda d: d["index"]["images"].update(path="https://evil.example/x.json"), "'path'"),
        (lambda d: d["index"]["images"].update(products="a"), "'products'"),
        (lambda d: d["index"]["images"].update(updated=12), "'updated'"),
        (lambda d: d["index"]["images"].update(format="products:9"), "'format'"),
    ],
)
def test_malformed_index_is_refused_naming_catalog_and_file(change: Any, expected: str) -> None:
    doc = json.loads(catalog.render_index(catalog.PRODUCTS_PATH, ["a:x86_64"], UPDATED))
    change(doc)
    with pytest.raises(CatalogError) as caught:
        catalog.parse_index("acme", json.dumps(doc).encode())
    assert "catalog 'acme': streams/v1/index.json is not valid" in str(caught.value)
    assert expected in str(caught.value)


def raw_keys() -> tuple[bytes, bytes]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, public


def test_public_key_text_round_trip() -> None:
    _, public = raw_keys()
    text = catalog.public_key_text(public)
    assert text.startswith("ed25519:") and len(text) == len("ed25519:") + 44
    assert catalog.parse_public_key(text) == public


@pytest.mark.parametrize(
    "text",
    ["", "ed25519:", "ed25519:abc", "rsa:" + "A" * 44, "ed25519:" + "A" * 43 + "!", "A" * 44],
)
def test_malformed_public_keys_are_refused_with_the_format(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"'ed25519:' followed by the base64 of 32 bytes"):
        catalog.parse_public_key(text)


def test_signatures_verify_only_with_the_signers_key_and_data() -> None:
    private, public = raw_keys()
    _, other = raw_keys()
    data = catalog.render_products([template()], UPDATED)
    signature = catalog.sign(private, data)
    assert signature.endswith(b"\n") and signature.count(b"\n") == 1
    catalog.verify(
        "acme", "streams/v1/images.json", catalog.public_key_text(public), data, signature
    )
    with pytest.raises(CatalogError) as caught:
        catalog.verify(
            "acme", "streams/v1/images.json", catalog.public_key_text(other), data, signature
        )
    assert str(caught.value).startswith(
        "catalog 'acme': the signature of streams/v1/images.json does not match its key ed25519:"
    )
    with pytest.raises(CatalogError, match="does not match"):
        catalog.verify("acme", "f", catalog.public_key_text(public), data + b" ", signature)
    with pytest.raises(CatalogError, match="not an ed25519 signature"):
        catalog.verify("acme", "f", catalog.public_key_text(public), data, b"bm90IGEgc2ln\n")


def test_references() -> None:
    assert catalog.parse_reference("acme:docker-debian") == ("acme", "docker-debian", None)
    assert catalog.parse_reference("acme:docker-debian:20261130_134501") == (
        "acme",
        "docker-debian",
        "20261130_134501",
    )
    for bad in ("acme", "acme:", ":x", "acme:x:1:2", "Acme:x", "acme:x:../1", "acme:x y"):
        with pytest.raises(InvalidInput, match="CATALOG:NAME"):
            catalog.parse_reference(bad)


def test_newest_follows_the_version_rule() -> None:
    versions = ["20261129_235959", "20261130_134501", "20261130_090000"]
    templates = [template(version=v) for v in versions] + [template("other", "20991231_000000")]
    found = catalog.newest(templates, "docker-debian")
    assert found is not None and found.version == "20261130_134501"
    assert catalog.newest(templates, "missing") is None
    assert catalog.newest(templates, "docker-debian", arch="aarch64") is None
    numbered = [template(version=v) for v in ("9", "10", "1.2", "1.10")]
    found = catalog.newest(numbered, "docker-debian")
    assert found is not None and found.version == "10"
    assert catalog.version_key("1.10") > catalog.version_key("1.2")
    assert catalog.version_key("2") < catalog.version_key("2a")


def test_size_problems() -> None:
    assert catalog.size_problem(TemplateSizes(1, 0, 2, GiB, 8 * GiB), 4 * GiB) is None
    assert "default disk" in str(catalog.size_problem(TemplateSizes(default_disk=GiB), 2 * GiB))
    assert "default memory" in str(
        catalog.size_problem(TemplateSizes(min_memory=GiB, default_memory=1), 1)
    )
    assert catalog.size_problem(replace(TemplateSizes(), min_vcpus=0), 1) is not None
