"""The HTTP(S) listeners: XML-RPC on POST, /import_raw_vdi on PUT.

The master listens on 127.0.0.1:PORT, the member on [::1]:PORT (same port), so a
client redirected by HOST_IS_SLAVE ["127.0.0.1"] keeps scheme and port. Each
connection has its own thread (keep-alive, so one client's long event.from does not
block others). `close` can reset live connections, which is how the pool vanishes.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import xmlrpc.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from .dispatch import Dispatcher
from .engine import Engine
from .vdi_import import check_request, store_upload

CHUNK = 1 << 20


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Listener

    def setup(self) -> None:
        super().setup()
        self.server.front.track(self.connection, True)
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.usable = True
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.settimeout(10)
            try:
                self.connection.do_handshake()
                self.connection.settimeout(None)
            except (OSError, ValueError):
                self.usable = False

    def handle(self) -> None:
        if self.usable:
            with contextlib.suppress(OSError, ValueError):
                super().handle()

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.front.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return None

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response_only(status)
            self.send_header("Server", "xapi-sim")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n")
            self.wfile.write(b"".join(self._headers_buffer) + body)
            self._headers_buffer = []
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = self.rfile.read(length)
            params, method = xmlrpc.client.loads(body, use_builtin_types=False)
        except (OSError, ValueError, xmlrpc.client.ResponseError, Exception):
            self._send(400)
            return
        front = self.server.front
        response = front.dispatcher.handle(method or "", params, self.server.member)
        payload = xmlrpc.client.dumps((response,), methodresponse=True, allow_none=True)
        self._send(200, payload.encode(), {"Content-Type": "text/xml"})

    def do_PUT(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/import_raw_vdi":
            self._send(404)
            return
        front = self.server.front
        if self.server.member:
            location = f"{front.master_url.rstrip('/')}{self.path}"
            self._send(302, headers={"Location": location})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply, vdi, session = check_request(front.engine, url.query, headers)
        if reply is not None:
            self.close_connection = True
            self._send(reply.status, headers=reply.headers)
            return
        remaining = int(headers["content-length"])
        size = 0
        while remaining > 0:
            chunk = self.rfile.read(min(CHUNK, remaining))
            if not chunk:
                self.close_connection = True
                return
            size += len(chunk)
            remaining -= len(chunk)
        reply = store_upload(front.engine, vdi, session, size)
        self._send(reply.status, headers=reply.headers)

    def do_GET(self) -> None:  # noqa: N802
        self._send(404)


class Listener(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, front: Front, host: str, port: int, member: bool) -> None:
        self.front = front
        self.member = member
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), Handler, bind_and_activate=False)
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise
        if front.tls is not None:
            self.socket = front.tls.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )


class Front:
    """Both listeners plus the live connections, for open/close/reset."""

    def __init__(self, engine: Engine, tls: ssl.SSLContext | None, members: bool) -> None:
        self.engine = engine
        self.tls = tls
        self.with_member = members
        self.port = 0
        self.scheme = "https" if tls else "http"
        self.dispatcher = Dispatcher(engine, "127.0.0.1")
        self.listeners: list[Listener] = []
        self.threads: list[threading.Thread] = []
        self.connections: set[socket.socket] = set()
        self.lock = threading.Lock()

    @property
    def master_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/"

    @property
    def member_url(self) -> str:
        return f"{self.scheme}://[::1]:{self.port}/"

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self.lock:
            if alive:
                self.connections.add(conn)
            else:
                self.connections.discard(conn)

    def open(self) -> None:
        """Listen; port 0 first picks a port free on both loopback addresses."""
        for _ in range(50):
            master = Listener(self, "127.0.0.1", self.port, member=False)
            port = master.server_address[1]
            listeners = [master]
            if self.with_member:
                try:
                    listeners.append(Listener(self, "::1", port, member=True))
                except OSError:
                    master.server_close()
                    if self.port:
                        raise
                    continue
            self.port = port
            self.listeners = listeners
            break
        else:
            raise OSError("no port free on both 127.0.0.1 and ::1")
        for listener in self.listeners:
            thread = threading.Thread(
                target=listener.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"xapi-sim listener {listener.server_address[0]}",
                daemon=True,
            )
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        """Stop listening and reset every open connection."""
        for listener in self.listeners:
            listener.shutdown()
            listener.server_close()
        for thread in self.threads:
            thread.join(timeout=1)
        self.listeners, self.threads = [], []
        with self.lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError, ValueError):
                conn.shutdown(socket.SHUT_RDWR)
