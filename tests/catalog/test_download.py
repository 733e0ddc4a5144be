"""Reading a catalog over HTTP: the signed index and products, and resumable downloads
checked against their signed size and checksum, with the server's faults injected."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockvisor.catalogs.client import CatalogClient
from dockvisor.catalogs.publish import load_or_create_signing_key, write_streams
from dockvisor.domain import catalog
from dockvisor.domain.catalog import CatalogFile, CatalogTemplate
from dockvisor.domain.model import TemplateSizes
from dockvisor.errors import Cancelled, CatalogError, InvalidInput
from tests.catalog.server import CatalogServer

SIZE = 3 * 1024 * 1024 + 12345  # a dozen of the client's buffers, and a bit
DISK = "images/docker-debian/1/x86_64/disk.qcow2"


@dataclass
class Catalog:
    directory: Path
    server: CatalogServer
    client: CatalogClient
    template: CatalogTemplate
    content: bytes
    private: bytes

    @property
    def disk(self) -> CatalogFile:
        return self.template.files["disk"]


def make_template(directory: Path, content: bytes, version: str = "1") -> CatalogTemplate:
    path = directory / DISK.replace("/1/", f"/{version}/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    disk = CatalogFile(
        "disk",
        path.relative_to(directory).as_posix(),
        hashlib.sha256(content).hexdigest(),
        len(content),
    )
    return CatalogTemplate(
        name="docker-debian",
        version=version,
        arch="x86_64",
        description="test",
        files={"disk": disk},
        cmdline=None,
        docker_port=2376,
        docker_version=None,
        features=(),
        sizes=TemplateSizes(),
        min_disk=len(content),
        published=datetime(2026, 11, 30, tzinfo=UTC),
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Catalog]:
    directory = tmp_path / "catalog"
    content = os.urandom(SIZE)
    template = make_template(directory, content)
    private, public = load_or_create_signing_key(tmp_path / "key.pem")
    write_streams(directory, [template], private, datetime(2026, 11, 30, 12, tzinfo=UTC))
    with CatalogServer(directory) as server:
        client = CatalogClient("acme", server.url, public, timeout=5)
        yield Catalog(directory, server, client, template, content, private)


def into(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


# The index and products


def test_fetch_returns_the_templates_and_the_update_time(served: Catalog) -> None:
    templates, updated = served.client.fetch()
    assert templates == [served.template]
    assert updated == datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert [path for path, _ in served.server.requests] == [
        "streams/v1/index.json",
        "streams/v1/index.json.sig",
        "streams/v1/images.json",
        "streams/v1/images.json.sig",
    ]


@pytest.mark.parametrize("path", [catalog.INDEX_PATH, catalog.PRODUCTS_PATH])
def test_a_tampered_file_is_refused(served: Catalog, path: str) -> None:
    file = served.directory / path
    file.write_bytes(file.read_bytes().replace(b"2376", b"2377").replace(b"1.0", b"1.0 "))
    with pytest.raises(CatalogError, match=f"catalog 'acme': the signature of {path} does not"):
        served.client.fetch()


def test_a_catalog_signed_by_an_unknown_key_is_refused(tmp_path: Path, served: Catalog) -> None:
    _, other = load_or_create_signing_key(tmp_path / "other.pem")
    client = CatalogClient("acme", served.server.url, other)
    with pytest.raises(CatalogError, match=re.escape(f"index.json does not match its key {other}")):
        client.fetch()


@pytest.mark.parametrize("path", [catalog.INDEX_PATH, catalog.PRODUCTS_PATH])
def test_a_missing_signature_is_refused(served: Catalog, path: str) -> None:
    (served.directory / f"{path}.sig").unlink()
    with pytest.raises(CatalogError) as caught:
        served.client.fetch()
    assert f"{served.server.url}{path}.sig answered 404" in str(caught.value)
    assert "the catalog is not signed" in str(caught.value)


def test_malformed_json_even_signed_is_refused(served: Catalog) -> None:
    products = b'{"format": "products:1.0", "products": '
    (served.directory / catalog.PRODUCTS_PATH).write_bytes(products)
    (served.directory / f"{catalog.PRODUCTS_PATH}.sig").write_bytes(
        catalog.sign(served.private, products)
    )
    with pytest.raises(CatalogError, match="catalog 'acme': streams/v1/images.json is not valid"):
        served.client.fetch()


def test_old_products_with_a_new_index_are_refused(served: Catalog) -> None:
    products = served.directory / catalog.PRODUCTS_PATH
    old = products.read_bytes(), (served.directory / f"{catalog.PRODUCTS_PATH}.sig").read_bytes()
    second = make_template(served.directory, b"second", version="2")
    later = datetime(2026, 12, 1, tzinfo=UTC)
    write_streams(served.directory, [served.template, second], served.private, later)
    products.write_bytes(old[0])
    (served.directory / f"{catalog.PRODUCTS_PATH}.sig").write_bytes(old[1])
    with pytest.raises(CatalogError, match="a mix of old and new catalog files"):
        served.client.fetch()


def test_a_bad_path_in_signed_products_is_refused(served: Catalog) -> None:
    bad = CatalogFile("disk", "../../etc/passwd", "a" * 64, 10)
    template = make_template(served.directory, b"x")
    products = catalog.render_products([template], datetime(2026, 11, 30, 12, tzinfo=UTC))
    products = products.replace(template.files["disk"].path.encode(), bad.path.encode())
    (served.directory / catalog.PRODUCTS_PATH).write_bytes(products)
    (served.directory / f"{catalog.PRODUCTS_PATH}.sig").write_bytes(
        catalog.sign(served.private, products)
    )
    with pytest.raises(CatalogError, match="'path' of item 'disk.qcow2'"):
        served.client.fetch()


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_name_the_catalog_and_url(served: Catalog, status: int) -> None:
    served.server.answer(catalog.INDEX_PATH, status)
    with pytest.raises(
        CatalogError,
        match=f"catalog 'acme': {served.server.url}streams/v1/index.json answered {status}",
    ):
        served.client.fetch()


def test_redirects_are_not_followed(served: Catalog) -> None:
    served.server.answer(catalog.INDEX_PATH, 301)
    with pytest.raises(CatalogError, match="redirects are not followed"):
        served.client.fetch()


def test_an_unreachable_catalog_is_named(tmp_path: Path, served: Catalog) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = CatalogClient("acme", f"http://127.0.0.1:{port}/x", served.client.public_key)
    with pytest.raises(CatalogError) as caught:
        client.fetch()
    assert (
        f"catalog 'acme' did not answer at http://127.0.0.1:{port}/x/streams/v1/index.json"
        in str(caught.value)
    )
    with pytest.raises(CatalogError, match="did not answer"):
        client.download(served.disk, into(tmp_path))
    assert list(into(tmp_path).iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/x",
        "file:///srv/catalog",
        "http://",
        "https://u:p@host/",
        "http://h/?q=1",
        "http://h:99999/",
    ],
)
def test_bad_urls_and_keys_are_refused(url: str, served: Catalog) -> None:
    with pytest.raises(InvalidInput, match="is not valid"):
        CatalogClient("acme", url, served.client.public_key)
    with pytest.raises(InvalidInput, match="ed25519:"):
        CatalogClient("acme", "https://example.org/", "ssh-ed25519 AAAA")


# Downloads


def test_download_checks_and_places_the_file(tmp_path: Path, served: Catalog) -> None:
    steps: list[tuple[str, float]] = []
    path = served.client.download(
        served.disk, into(tmp_path), progress=lambda s, f: steps.append((s, f))
    )
    assert path == into(tmp_path) / served.disk.sha256
    assert path.read_bytes() == served.content
    assert list(into(tmp_path).iterdir()) == [path]
    assert steps[-1] == (f"downloading {DISK}", 1.0)
    assert len(steps) <= 12  # at most ten a second, and this takes well under one


def test_an_already_downloaded_file_is_returned_without_a_request(
    tmp_path: Path, served: Catalog
) -> None:
    first = served.client.download(served.disk, into(tmp_path))
    served.server.requests.clear()
    assert served.client.download(served.disk, into(tmp_path)) == first
    assert served.server.requests == []


def test_a_download_cut_short_resumes_where_it_stopped(tmp_path: Path, served: Catalog) -> None:
    served.server.cut(DISK, after=1_000_000)
    with pytest.raises(CatalogError) as caught:
        served.client.download(served.disk, into(tmp_path))
    assert "run the pull again to resume" in str(caught.value)
    part = into(tmp_path) / f"{served.disk.sha256}.part"
    assert part.stat().st_size == 1_000_000
    path = served.client.download(served.disk, into(tmp_path))
    assert path.read_bytes() == served.content
    assert served.server.requests[-1] == (DISK, "bytes=1000000-")
    assert served.server.sent[DISK] == SIZE  # each byte once
    assert not part.exists()


def test_a_server_that_ignores_ranges_makes_it_start_over(tmp_path: Path, served: Catalog) -> None:
    served.server.ranges = False
    served.server.cut(DISK, after=500_000)
    with pytest.raises(CatalogError, match="resume"):
        served.client.download(served.disk, into(tmp_path))
    path = served.client.download(served.disk, into(tmp_path))
    assert served.server.requests[-1] == (DISK, "bytes=500000-")
    assert served.server.sent[DISK] == 500_000 + SIZE
    assert path.read_bytes() == served.content


def test_a_truncated_download_keeps_the_part_and_says_resume(
    tmp_path: Path, served: Catalog
) -> None:
    served.server.cut(DISK, after=500_000, always=True)
    for received in (500_000, 1_000_000):
        with pytest.raises(CatalogError) as caught:
            served.client.download(served.disk, into(tmp_path))
        message = str(caught.value)
        assert message.startswith(f"catalog 'acme': the download of {served.server.url}{DISK}")
        assert f"cut short after {received} of {SIZE} bytes" in message
        assert "run the pull again to resume" in message
    assert (into(tmp_path) / f"{served.disk.sha256}.part").stat().st_size == 1_000_000
    assert not (into(tmp_path) / served.disk.sha256).exists()


def test_a_checksum_mismatch_removes_the_part(tmp_path: Path, served: Catalog) -> None:
    corrupt = bytearray(served.content)
    corrupt[SIZE // 2] ^= 0xFF
    served.server.serve(DISK, bytes(corrupt))
    with pytest.raises(CatalogError) as caught:
        served.client.download(served.disk, into(tmp_path))
    assert f"catalog 'acme': the checksum of {DISK} does not match" in str(caught.value)
    assert list(into(tmp_path).iterdir()) == []


def test_an_oversized_download_is_stopped_and_removed(tmp_path: Path, served: Catalog) -> None:
    served.server.serve(DISK, served.content + b"more")
    with pytest.raises(CatalogError, match=f"{DISK} is larger .* than its signed size"):
        served.client.download(served.disk, into(tmp_path))
    assert list(into(tmp_path).iterdir()) == []


def test_an_oversized_body_of_unannounced_length_is_stopped(
    tmp_path: Path, served: Catalog
) -> None:
    served.server.serve(DISK, served.content + os.urandom(8 * 1024 * 1024), length=False)
    with pytest.raises(CatalogError, match="sent more than its signed size"):
        served.client.download(served.disk, into(tmp_path))
    assert list(into(tmp_path).iterdir()) == []


def test_a_smaller_file_is_refused_and_removed(tmp_path: Path, served: Catalog) -> None:
    served.server.serve(DISK, served.content[:-1])
    with pytest.raises(CatalogError, match="is smaller .* than its signed size"):
        served.client.download(served.disk, into(tmp_path))
    assert list(into(tmp_path).iterdir()) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_on_a_file_keep_what_was_received(
    tmp_path: Path, served: Catalog, status: int
) -> None:
    served.server.cut(DISK, after=100_000)
    with pytest.raises(CatalogError):
        served.client.download(served.disk, into(tmp_path))
    served.server.answer(DISK, status)
    with pytest.raises(CatalogError) as caught:
        served.client.download(served.disk, into(tmp_path))
    assert f"catalog 'acme': {served.server.url}{DISK} answered {status}" in str(caught.value)
    assert "100000 bytes received are kept" in str(caught.value)
    assert (into(tmp_path) / f"{served.disk.sha256}.part").stat().st_size == 100_000


def test_a_full_disk_removes_the_part_and_says_so(tmp_path: Path, served: Catalog) -> None:
    into(tmp_path).mkdir()
    part = into(tmp_path) / f"{served.disk.sha256}.part"
    part.symlink_to("/dev/full")  # writing it fails with ENOSPC
    with pytest.raises(CatalogError) as caught:
        served.client.download(served.disk, into(tmp_path))
    assert str(caught.value) == (
        f"disk full while downloading {DISK} from catalog 'acme' into {into(tmp_path)}; "
        "the partial download was removed"
    )
    assert list(into(tmp_path).iterdir()) == []


def test_a_cancelled_download_stops_and_removes_the_part(tmp_path: Path, served: Catalog) -> None:
    with pytest.raises(Cancelled, match=f"download of {DISK} from catalog 'acme' cancelled"):
        served.client.download(served.disk, into(tmp_path), cancelled=lambda: True)
    assert list(into(tmp_path).iterdir()) == []


def test_a_wrong_file_in_place_is_downloaded_again(tmp_path: Path, served: Catalog) -> None:
    into(tmp_path).mkdir()
    (into(tmp_path) / served.disk.sha256).write_bytes(b"x" * SIZE)
    path = served.client.download(served.disk, into(tmp_path))
    assert path.read_bytes() == served.content
    assert served.server.requests == [(DISK, None)]
