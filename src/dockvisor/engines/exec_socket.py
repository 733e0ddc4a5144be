"""A hijacked engine connection on a blocking socket: an interactive exec's raw bytes.

Over TLS the session runs in memory (engines/tls.py) on top of the TCP socket, so that
the writing side can be closed alone: `close_write` sends close_notify (Go's
tls.Conn.CloseWrite, which the Docker CLI uses to end an exec's stdin) and the engine's
output can still be read to its end.
"""

from __future__ import annotations

import socket
import ssl
import threading

from dockvisor.engines.tls import TlsSession

__all__ = ["ExecSocket", "TlsConnection", "read_head"]

_CHUNK = 64 * 1024


class TlsConnection:
    """A TLS client connection on a blocking socket, through `TlsSession`.

    One thread may read while another writes. `_lock` guards the session and is never
    held while blocked on the socket; `_send_lock` keeps records in order on the wire;
    `_recv_lock` keeps one reader at a time.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        # the context's CERT_REQUIRED and check_hostname apply as with wrap_socket
        self._tls = TlsSession(context, server_hostname)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()

    def handshake(self) -> None:
        """The TLS handshake, certificate and name checks included (raises SSLError)."""
        while True:
            with self._lock:
                done = self._tls.handshake()
            self._flush()
            if done:
                return
            self._fill()  # at the socket's end, the next step raises

    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to `size` bytes of plaintext; b"" at the end (close_notify or closed socket)."""
        with self._recv_lock:
            while True:
                with self._lock:
                    data = self._tls.read(size)
                    reply = bool(self._tls.outgoing_pending)
                if reply:
                    self._flush(wait=False)  # never wait behind a writer blocked on a full pipe
                if data is not None:
                    return data
                self._fill()

    def sendall(self, data: bytes) -> None:
        """Send `data`; BrokenPipeError once the writing side is closed."""
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            with self._lock:
                if self._tls.write_closed:
                    raise BrokenPipeError("the exec's input is already closed")
                self._tls.write(bytes(view[start : start + _CHUNK]))
            self._flush()

    def close_write(self) -> None:
        """Send close_notify (the engine reads it as the end of stdin); keep reading."""
        with self._lock:
            if self._tls.write_closed:
                return
            self._tls.close_write()
        self._flush()

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        """Feed the next bytes from the socket to TLS; False at the socket's end."""
        data = self.sock.recv(_CHUNK)
        with self._lock:
            self._tls.receive(data)
        return bool(data)

    def _flush(self, *, wait: bool = True) -> None:
        """Send what TLS has to say, in order. Records are taken from the session and
        sent under `_send_lock`, so two threads cannot swap them on the wire."""
        if not self._send_lock.acquire(blocking=wait):
            return  # left in the session: the next flush sends it, still in order
        try:
            while True:
                with self._lock:
                    data = self._tls.outgoing()
                if not data:
                    return
                self.sock.sendall(data)
        finally:
            self._send_lock.release()


class ExecSocket:
    """An interactive exec's connection, hijacked from HTTP: raw bytes both ways.

    With a TTY the output is the terminal's bytes; without one it is multiplexed
    (engines/streams.py: `demultiplex`, `FrameReader`). `pending` holds output already
    read past the HTTP head; `recv` returns it first. `exec_id` is for `exec_resize` and
    `exec_inspect` (exit code).

    `sock` is the TCP socket underneath, also over TLS (where TLS runs in memory on top
    of it): use it for `settimeout`, never to read or write. One thread may `recv` while
    another `sendall`s. `close_write` ends the exec's stdin and leaves its output to
    read: a TCP half-close, or over TLS a close_notify alert.
    """

    def __init__(self, conn: socket.socket | TlsConnection, exec_id: str, pending: bytes) -> None:
        self._conn = conn
        self.sock: socket.socket = conn.sock if isinstance(conn, TlsConnection) else conn
        self.exec_id = exec_id
        self.pending = pending

    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to `size` bytes of output; b"" once the exec has ended."""
        if self.pending:
            data, self.pending = self.pending[:size], self.pending[size:]
            return data
        return self._conn.recv(size)

    def sendall(self, data: bytes) -> None:
        self._conn.sendall(data)

    def read_all(self) -> bytes:
        """Everything until the exec ends."""
        data = bytearray()
        while chunk := self.recv():
            data.extend(chunk)
        return bytes(data)

    def close_write(self) -> None:
        """End the exec's stdin; its output can still be read to the end."""
        if isinstance(self._conn, TlsConnection):
            self._conn.close_write()
        else:
            self._conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ExecSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_head(sock: socket.socket | TlsConnection) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP response head; (status, lower-cased headers, bytes read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(_CHUNK)
        if not chunk:
            raise ConnectionError("the engine closed the connection before answering")
        data += chunk
        if len(data) > 64 * 1024:
            raise ConnectionError("the engine's answer has no end of headers")
    head, rest = data.split(b"\r\n\r\n", 1)
    return (*parse_head(head), rest)


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """(status, lower-cased headers) of a response head without its blank line."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers
