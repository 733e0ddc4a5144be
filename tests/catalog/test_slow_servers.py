"""A catalog server that sends a byte now and then, each well within the socket's
timeout, holds the client no longer than its deadline (metadata) or its minimum rate
(downloads): the search or pull then fails naming why, and a download keeps its part
to resume."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dockvisor.catalogs.client import CatalogClient
from dockvisor.catalogs.publish import load_or_create_signing_key
from dockvisor.domain.catalog import CatalogFile
from dockvisor.errors import CatalogError


@pytest.fixture
def trickling() -> Iterator[str]:
    """A server whose every answer is a 100000-byte body sent one byte each 0.2 s."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                while not stop.is_set():
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def test_a_trickled_index_is_given_up_at_the_deadline(trickling: str, tmp_path: Path) -> None:
    _, key = load_or_create_signing_key(tmp_path / "key.pem")
    client = CatalogClient("slow", trickling, key, timeout=1.0, deadline=2.0)
    started = time.monotonic()
    with pytest.raises(CatalogError, match=r"'slow'.*index\.json.*within 2 s"):
        client.fetch()
    assert time.monotonic() - started < 5


def test_a_trickled_download_is_cut_and_kept_to_resume(trickling: str, tmp_path: Path) -> None:
    _, key = load_or_create_signing_key(tmp_path / "key.pem")
    client = CatalogClient("slow", trickling, key, timeout=1.0, min_rate=1000, rate_window=2.0)
    file = CatalogFile("disk", "disk.qcow2", "0" * 64, 100000)
    started = time.monotonic()
    with pytest.raises(CatalogError, match=r"less than 1000 bytes/s.*resume"):
        client.download(file, tmp_path / "in")
    assert time.monotonic() - started < 6
    part = tmp_path / "in" / f"{'0' * 64}.part"
    assert 0 < part.stat().st_size < 100, "what came is kept for the next pull"
