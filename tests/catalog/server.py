"""A static HTTP/1.1 file server for the catalog tests and benchmark, with faults on demand.

It serves a directory on 127.0.0.1 (a free port), one thread per connection, files sent
with os.sendfile, `Range: bytes=N-` answered with 206 and Content-Range. For a given path
(relative to the directory, as the catalog names it) it can cut the connection after N
bytes of the body, serve other bytes, answer a status, or ignore Range.
"""

from __future__ import annotations

import os
import re
import threading
from contextlib import suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["CatalogServer"]

_RANGE = re.compile(r"bytes=(\d+)-")


@dataclass
class _Cut:
    after: int
    always: bool


class CatalogServer:
    """`with CatalogServer(directory) as server:` serves `directory` at `server.url`."""

    def __init__(self, directory: Path, *, ranges: bool = True) -> None:
        self.directory = directory.resolve()
        self.ranges = ranges  # False: every Range header is ignored (200, whole file)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.sent: dict[str, int] = {}  # body bytes sent, by path
        self._cuts: dict[str, _Cut] = {}
        self._content: dict[str, tuple[bytes, bool]] = {}
        self._status: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def cut(self, path: str, after: int, *, always: bool = False) -> None:
        """Close the connection after `after` body bytes of `path`: on the next request
        only, or on every request if `always`."""
        self._cuts[path] = _Cut(after, always)

    def serve(self, path: str, content: bytes, *, length: bool = True) -> None:
        """Answer `path` with `content` instead of the file (a corrupt or longer file);
        without `length`, the body has no Content-Length and ends when the connection
        is closed."""
        self._content[path] = (content, length)

    def answer(self, path: str, status: int) -> None:
        """Answer `path` with this status and a short text body."""
        self._status[path] = status

    def __enter__(self) -> CatalogServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _record(self, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((path, range_header))

    def _count(self, path: str, sent: int) -> None:
        with self._lock:
            self.sent[path] = self.sent.get(path, 0) + sent

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            cut = self._cuts.get(path)
            if cut is None:
                return None
            if not cut.always:
                del self._cuts[path]
            return cut.after


def _handler(server: CatalogServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read `server.requests`

        def handle(self) -> None:
            with suppress(ConnectionResetError, BrokenPipeError):
                super().handle()  # a client that went away is no error here

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].lstrip("/")
            range_header = self.headers.get("Range")
            server._record(path, range_header)
            if path in server._status:
                status = server._status[path]
                self._send_bytes(status, f"status {status}\n".encode())
                return
            if path in server._content:
                content, length = server._content[path]
                self._send_bytes(200, content, length=length)
                return
            file = (server.directory / path).resolve()
            if not file.is_relative_to(server.directory) or not file.is_file():
                self._send_bytes(404, b"not found\n")
                return
            self._send_file(path, file, range_header)

        def _send_bytes(self, status: int, body: bytes, *, length: bool = True) -> None:
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "http://elsewhere.invalid/")
            if length:
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
                return
            server._count(self.path.lstrip("/"), len(body))

        def _send_file(self, path: str, file: Path, range_header: str | None) -> None:
            size = file.stat().st_size
            start = 0
            match = _RANGE.fullmatch(range_header or "")
            if server.ranges and match is not None:
                start = int(match.group(1))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(size - start))
            self.send_header("Accept-Ranges", "bytes" if server.ranges else "none")
            self.end_headers()
            end = size
            cut = server._take_cut(path)
            if cut is not None:
                end = min(size, start + cut)
            self._sendfile(path, file, start, end)
            if end < size:
                self.close_connection = True

        def _sendfile(self, path: str, file: Path, start: int, end: int) -> None:
            offset = start
            with open(file, "rb") as f:
                try:
                    while offset < end:
                        sent = os.sendfile(
                            self.connection.fileno(), f.fileno(), offset, end - offset
                        )
                        if sent == 0:
                            break
                        offset += sent
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    server._count(path, offset - start)

    return Handler
