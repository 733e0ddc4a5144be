"""A client of the Docker Engine API (v1.41, Docker 20.10) for the engine inside a VM.

Speaks HTTP, or HTTPS with a client certificate, to a `DockerEndpoint` (the address
comes from the hypervisor adapter, never from a request). Over TLS the engine's
certificate must carry `endpoint.server_name`, which is not the address dialled (a
loopback forward), so one VM cannot answer for another. One pooled connection set per
`DockerEngine`.

Errors come back as dockvisor errors carrying the engine's own message: NotFound (404),
AlreadyExists (409 name taken), BadPowerState (409 not running, paused...), InvalidInput
(400, or a `ContainerSpec` refused before any request), EngineUnavailable when the
engine does not answer, EngineError for the rest.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Generic, NamedTuple, TypeVar
from urllib.parse import quote

import httpx

from dockvisor import errors
from dockvisor.domain.model import DockerEndpoint
from dockvisor.engines.tls import send_close_notify
from dockvisor.errors import (
    AlreadyExists,
    BadPowerState,
    DockvisorError,
    GuestTimeout,
    HypervisorError,
    InvalidInput,
    NotFound,
)

__all__ = [
    "API_VERSION",
    "ContainerSpec",
    "DockerEngine",
    "EngineCertificateError",
    "EngineError",
    "EngineStream",
    "EngineUnavailable",
    "ExecResult",
    "ExecSocket",
    "PortBinding",
    "demultiplex",
]

API_VERSION = "v1.41"  # Docker 20.10, what the built-in guest runs

MIN_MEMORY = 6 * 1024 * 1024  # the smallest memory limit dockerd accepts (6 MiB)
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # dockerd's rule for container names
_RESTART = re.compile(r"no|always|unless-stopped|on-failure(:(?P<retries>\d+))?")
_CHUNK = 64 * 1024
_WRONG_STATE = re.compile(
    r"is (not running|not paused|paused|already paused|restarting)\b"
    r"|cannot remove a running container",
    re.IGNORECASE,
)
_NAME_TAKEN = re.compile(r"already in use|already exists", re.IGNORECASE)

T = TypeVar("T")
Since = float | dt.datetime | None


class EngineError(HypervisorError):
    code = "engine-error"


class EngineUnavailable(errors.EngineUnavailable, EngineError):
    """The engine does not answer: refused, reset, timed out or TLS handshake failed.
    Both dockvisor's EngineUnavailable (first in the MRO: 503 in the API) and an
    EngineError."""

    code = errors.EngineUnavailable.code


class EngineCertificateError(EngineUnavailable):
    """The engine's certificate is not one we trust for this VM (wrong CA or name)."""


# -- errors --------------------------------------------------------------------------


def _error_for(status: int, message: str, doing: str) -> DockvisorError:
    message = message.strip()
    text = f"{doing}: {message}"
    if status == 404:
        return NotFound(text)
    if status == 400:
        return InvalidInput(text)
    # A container in the wrong state: 409 mostly, 500 for some (unpause of a running one).
    if status in (409, 500) and _WRONG_STATE.search(message):
        return BadPowerState(text)
    if status == 409 and _NAME_TAKEN.search(message):
        return AlreadyExists(text)
    return EngineError(text)


def _raise_for(response: httpx.Response, doing: str) -> None:
    if response.is_success or response.status_code == 304:  # 304: already so (start, stop)
        return
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text
    raise _error_for(response.status_code, message or response.reason_phrase, doing)


def _cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# -- streams -------------------------------------------------------------------------


def demultiplex(raw: bytes) -> tuple[bytes, bytes]:
    """Split a non-TTY attach/logs/exec stream into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    for kind, chunk in _frames([raw]):
        (err if kind == "stderr" else out).extend(chunk)
    return bytes(out), bytes(err)


def _frames(chunks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """The (stream, bytes) frames of a multiplexed stream, as soon as each is whole."""
    buffer = bytearray()
    for chunk in chunks:
        buffer.extend(chunk)
        while len(buffer) >= 8:
            size = int.from_bytes(buffer[4:8], "big")
            if len(buffer) < 8 + size:
                break
            kind = "stderr" if buffer[0] == 2 else "stdout"
            payload = bytes(buffer[8 : 8 + size])
            del buffer[: 8 + size]
            if payload:
                yield kind, payload


def _raw_frames(chunks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
    """A TTY stream is not multiplexed: everything is stdout."""
    for chunk in chunks:
        if chunk:
            yield "stdout", chunk


def _json_objects(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a newline-delimited JSON stream (events, progress, stats)."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield dict(json.loads(line))
    if buffer.strip():
        yield dict(json.loads(buffer))


class EngineStream(Generic[T]):
    """A streamed engine response read as it arrives (logs, events, stats, image export).

    Iterate it; `close()` it, or use it in a `with` block, to release the connection.
    `close()` may be called from another thread while one is blocked reading: the
    reader then sees the end of the stream.
    """

    def __init__(
        self,
        response: httpx.Response,
        parse: Callable[[Iterable[bytes]], Iterator[T]],
        unavailable: Callable[[Exception], EngineUnavailable],
    ) -> None:
        self._response = response
        self._items = parse(response.iter_raw())
        self._unavailable = unavailable
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False
        self._released = False

    def __iter__(self) -> EngineStream[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            if self._closed:
                raise StopIteration
            self._reading = True
        try:
            return next(self._items)
        except StopIteration:
            with self._lock:
                self._closed = True
            raise
        except (httpx.HTTPError, OSError, ValueError) as exc:
            with self._lock:
                closed_elsewhere, self._closed = self._closed, True
            if closed_elsewhere:  # closed by another thread: the end of the stream
                raise StopIteration from None
            if isinstance(exc, httpx.HTTPError | OSError):
                raise self._unavailable(exc) from exc
            raise EngineError(f"the engine sent a stream that cannot be read: {exc}") from exc
        finally:
            with self._lock:
                self._reading = False
                release = self._closed
            if release:
                self._release()

    def close(self) -> None:
        """Stop the stream and release its connection (safe from any thread, repeatable)."""
        with self._lock:
            self._closed = True
            if self._reading:  # wake the reader; it releases the response itself
                self._shutdown_socket()
                return
        self._release()

    def _shutdown_socket(self) -> None:
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            # The plain socket's call, under any TLS layer: it wakes a blocked recv.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        close_items = getattr(self._items, "close", None)
        if close_items is not None:
            with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                close_items()
        with contextlib.suppress(httpx.HTTPError, OSError):
            self._response.close()

    def __enter__(self) -> EngineStream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a consumer that stops early releases the connection too
        with contextlib.suppress(Exception):
            self.close()


# -- containers: what to create ------------------------------------------------------


class PortBinding(NamedTuple):
    """A host port published to a container port; plain (host, container[, proto[, ip]])
    tuples are accepted wherever a PortBinding is."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = "0.0.0.0"


@dataclass(frozen=True)
class ContainerSpec:
    """A container to create, in dockvisor's words; checked before any request.

    `volumes` are binds "SRC:DST[:ro|rw]" (SRC an absolute path or a named volume) or an
    anonymous volume "DST". `restart_policy` is "no", "always", "unless-stopped" or
    "on-failure[:N]". `cpus` becomes NanoCpus, `memory` is a limit in bytes (>= 6 MiB).
    """

    image: str
    command: Sequence[str] | None = None
    name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[PortBinding | tuple[Any, ...]] = ()
    volumes: Sequence[str] = ()
    restart_policy: str = "no"
    cpus: float | None = None
    memory: int | None = None
    tty: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def request(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The query and body of POST /containers/create; InvalidInput if unusable."""
        if not self.image or not self.image.strip():
            raise InvalidInput("a container needs an image")
        if self.command is not None and isinstance(self.command, str):
            raise InvalidInput("give the command as a list of arguments, not one string")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise InvalidInput(
                f"invalid container name {self.name!r}: use at least 2 characters of "
                "[a-zA-Z0-9_.-], starting with a letter or digit"
            )
        for key in self.env:
            if not key or "=" in key or "\x00" in key:
                raise InvalidInput(f"invalid environment variable name {key!r}")
        host: dict[str, Any] = {
            "RestartPolicy": _restart_policy(self.restart_policy),
        }
        body: dict[str, Any] = {"Image": self.image, "Tty": self.tty, "HostConfig": host}
        if self.command is not None:
            body["Cmd"] = list(self.command)
        if self.env:
            body["Env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.labels:
            body["Labels"] = dict(self.labels)
        if self.ports:
            exposed: dict[str, dict[str, Any]] = {}
            bindings: dict[str, list[dict[str, str]]] = {}
            for port in self.ports:
                binding = _port_binding(port)
                key = f"{binding.container_port}/{binding.protocol}"
                exposed[key] = {}
                bindings.setdefault(key, []).append(
                    {"HostIp": binding.host_ip, "HostPort": str(binding.host_port)}
                )
            body["ExposedPorts"] = exposed
            host["PortBindings"] = bindings
        binds, anonymous = _volumes(self.volumes)
        if binds:
            host["Binds"] = binds
        if anonymous:
            body["Volumes"] = {path: {} for path in anonymous}
        if self.cpus is not None:
            if not self.cpus > 0:
                raise InvalidInput(f"cpus must be more than 0, not {self.cpus}")
            host["NanoCpus"] = round(self.cpus * 1e9)
        if self.memory is not None:
            if isinstance(self.memory, bool) or self.memory < MIN_MEMORY:
                raise InvalidInput(
                    f"a memory limit must be at least 6 MiB ({MIN_MEMORY} bytes), not {self.memory}"
                )
            host["Memory"] = int(self.memory)
        return ({"name": self.name} if self.name else {}), body


def _restart_policy(policy: str) -> dict[str, Any]:
    match = _RESTART.fullmatch(policy)
    if not match:
        raise InvalidInput(
            f"invalid restart policy {policy!r}: use no, always, unless-stopped or on-failure[:N]"
        )
    name = policy.split(":")[0]
    retries = int(match["retries"]) if match["retries"] else 0
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": retries}


def _port_binding(port: PortBinding | tuple[Any, ...]) -> PortBinding:
    if not isinstance(port, tuple) or not 2 <= len(port) <= 4:
        raise InvalidInput(
            f"invalid port {port!r}: give (host_port, container_port[, protocol[, host_ip]])"
        )
    binding = PortBinding(*port)
    for which, number in (("host", binding.host_port), ("container", binding.container_port)):
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise InvalidInput(f"invalid {which} port {number!r}: ports are 1 to 65535")
    if binding.protocol not in ("tcp", "udp"):
        raise InvalidInput(f"invalid protocol {binding.protocol!r}: use tcp or udp")
    if not isinstance(binding.host_ip, str) or not binding.host_ip:
        raise InvalidInput(f"invalid host address {binding.host_ip!r}")
    return binding


def _volumes(volumes: Sequence[str]) -> tuple[list[str], list[str]]:
    binds, anonymous = [], []
    for volume in volumes:
        parts = volume.split(":") if isinstance(volume, str) else []
        if len(parts) == 1 and parts[0].startswith("/"):
            anonymous.append(parts[0])
            continue
        if len(parts) not in (2, 3):
            raise InvalidInput(f"invalid volume {volume!r}: use SRC:DST[:ro] or DST")
        source, target = parts[0], parts[1]
        if not (source.startswith("/") or _NAME.fullmatch(source)):
            raise InvalidInput(
                f"invalid volume {volume!r}: the source is an absolute path or a volume "
                "name of [a-zA-Z0-9_.-]"
            )
        if not target.startswith("/"):
            raise InvalidInput(f"invalid volume {volume!r}: the target must be an absolute path")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise InvalidInput(f"invalid volume {volume!r}: the mode is ro or rw")
        binds.append(volume)
    return binds, anonymous


# -- exec ----------------------------------------------------------------------------


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


class _TlsConnection:
    """A TLS client connection on a blocking socket, run through memory BIOs
    (`ssl.SSLObject`) rather than an `ssl.SSLSocket`, so that the writing side can be
    closed alone: `close_write` sends TLS close_notify (Go's tls.Conn.CloseWrite, which the
    Docker CLI uses to end an exec's stdin) and the engine's answer can still be read.

    One thread may read while another writes. `_lock` guards the SSLObject and its BIOs
    and is never held while blocked on the socket; `_send_lock` keeps records in order on
    the wire; `_recv_lock` keeps one reader at a time.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # the context's CERT_REQUIRED and check_hostname apply as with wrap_socket
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._plain = bytearray()  # decrypted ahead of a half-close, not yet returned
        self._write_closed = False

    def handshake(self) -> None:
        """The TLS handshake, certificate and name checks included (raises SSLError)."""
        while True:
            with self._lock:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            self._flush()
            if done:
                return
            if not self._fill():
                raise ConnectionResetError("the engine closed the connection during TLS setup")

    def recv(self, size: int = _CHUNK) -> bytes:
        """Up to `size` bytes of plaintext; b"" at the end (close_notify or closed socket)."""
        with self._recv_lock:
            while True:
                data: bytes | None
                with self._lock:
                    if self._plain:
                        data = bytes(self._plain[:size])
                        del self._plain[:size]
                        return data
                    try:
                        data = self._tls.read(size)
                    except ssl.SSLWantReadError:
                        if self._incoming.eof:
                            return b""
                        data = None
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        return b""
                    reply = self._outgoing.pending > 0  # e.g. a TLS 1.3 KeyUpdate answer
                if reply:
                    self._flush(wait=False)  # never wait behind a writer blocked on a full pipe
                if data is not None:
                    return data
                self._fill()

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            with self._lock:
                if self._write_closed:
                    raise BrokenPipeError("the exec's input is already closed")
                self._tls.write(view[start : start + _CHUNK])
            self._flush()

    def close_write(self) -> None:
        """Send close_notify (the engine reads it as the end of stdin); keep reading."""
        with self._send_lock:
            with self._lock:
                if self._write_closed:
                    return
                self._write_closed = True
                self._plain += send_close_notify(self._tls)
                alert = self._outgoing.read()
            if alert:
                self.sock.sendall(alert)

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        """Feed the next bytes from the socket to TLS; False at the socket's end."""
        data = self.sock.recv(_CHUNK)
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()
        return bool(data)

    def _flush(self, *, wait: bool = True) -> None:
        """Send what TLS has to say, in order. Records are taken from the BIO and sent
        under `_send_lock`, so two threads cannot swap them on the wire."""
        if not self._send_lock.acquire(blocking=wait):
            return  # left in the BIO: the next flush sends it, still in order
        try:
            while True:
                with self._lock:
                    data = self._outgoing.read()
                if not data:
                    return
                self.sock.sendall(data)
        finally:
            self._send_lock.release()


class ExecSocket:
    """An interactive exec's connection, hijacked from HTTP: raw bytes both ways.

    With a TTY the output is the terminal's bytes; without one it is multiplexed
    (`demultiplex`). `pending` holds output already read past the HTTP head; `recv`
    returns it first. `exec_id` is for `exec_resize` and `exec_inspect` (exit code).

    `sock` is the TCP socket underneath, also over TLS (where TLS runs in memory on top
    of it): use it for `settimeout`, never to read or write. One thread may `recv` while
    another `sendall`s. `close_write` ends the exec's stdin and leaves its output to
    read: a TCP half-close, or over TLS a close_notify alert.
    """

    def __init__(self, conn: socket.socket | _TlsConnection, exec_id: str, pending: bytes) -> None:
        self._conn = conn
        self.sock: socket.socket = conn.sock if isinstance(conn, _TlsConnection) else conn
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
        if isinstance(self._conn, _TlsConnection):
            self._conn.close_write()
        else:
            self._conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ExecSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the client ----------------------------------------------------------------------


class _NamedServerTransport(httpx.HTTPTransport):
    """Sends TLS server_hostname = the engine's certificate name, not the dialled host."""

    def __init__(self, server_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server_name = server_name

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions["sni_hostname"] = self._server_name
        return super().handle_request(request)


def _query(**values: Any) -> dict[str, str]:
    """Query parameters as dockerd reads them: booleans 1/0, filters as JSON."""
    params: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            params[key] = "1" if value else "0"
        elif isinstance(value, Mapping):
            params[key] = json.dumps({k: list(v) for k, v in value.items()})
        else:
            params[key] = str(value)
    return params


def _timestamp(since: Since) -> int | None:
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        return int(since.timestamp())
    return int(since)


def _chunks(source: IO[bytes] | Iterable[bytes] | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes | bytearray):
        yield bytes(source)
        return
    read = getattr(source, "read", None)
    if read is not None:
        while chunk := read(_CHUNK):
            yield chunk
        return
    yield from source


class DockerEngine:
    """The Docker engine of one VM.

    Over TLS (`endpoint.tls`) an `ssl_context` is required: it carries the CA that signs
    engine certificates and dockvisor's client certificate, and must check names; the
    engine's certificate is checked against `endpoint.server_name` (or `host`).
    """

    def __init__(
        self,
        endpoint: DockerEndpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        self._server_name = endpoint.server_name or endpoint.host
        self._ssl_context: ssl.SSLContext | None = None
        transport: httpx.HTTPTransport
        if endpoint.tls:
            if ssl_context is None:
                raise ValueError(f"{endpoint.docker_host} speaks TLS: an ssl_context is needed")
            if ssl_context.verify_mode != ssl.CERT_REQUIRED or not ssl_context.check_hostname:
                raise ValueError("the ssl_context must verify certificates and their names")
            self._ssl_context = ssl_context
            transport = _NamedServerTransport(self._server_name, verify=ssl_context)
        else:
            transport = httpx.HTTPTransport()
        self._client = httpx.Client(
            base_url=f"{endpoint.base_url}/{API_VERSION}",
            timeout=timeout,
            trust_env=False,
            transport=transport,
        )

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- plumbing ------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, doing: str) -> EngineUnavailable:
        where = f"the Docker engine at {self.endpoint.docker_host}"
        cert = _cert_error(exc)
        if cert is not None:
            return EngineCertificateError(
                f"{doing}: {where} is not the engine {self._server_name!r}: "
                f"{cert.verify_message or cert}"
            )
        reason = str(exc) or type(exc).__name__
        return EngineUnavailable(f"{doing}: {where} does not answer ({reason})")

    def _call(
        self,
        method: str,
        path: str,
        doing: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        content: Iterable[bytes] | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Response:
        request = self._client.build_request(
            method,
            path,
            params=params,
            json=json_body,
            content=content,
            headers=headers,
            timeout=self._timeout if timeout is None else timeout,
        )
        try:
            response = self._client.send(request)
        except httpx.TransportError as exc:
            raise self._unavailable(exc, doing) from exc
        _raise_for(response, doing)
        return response

    def _stream(
        self,
        method: str,
        path: str,
        doing: str,
        parse: Callable[[Iterable[bytes]], Iterator[T]],
        *,
        params: Mapping[str, str] | None = None,
        content: Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EngineStream[T]:
        """Send now (so refusals raise here); read the body as it comes, with no read
        timeout."""
        request = self._client.build_request(
            method,
            path,
            params=params,
            content=content,
            headers=headers,
            timeout=httpx.Timeout(self._timeout, read=None),
        )
        try:
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._unavailable(exc, doing) from exc
        if not response.is_success:
            try:
                response.read()
            except httpx.HTTPError as exc:
                raise self._unavailable(exc, doing) from exc
            finally:
                response.close()
            _raise_for(response, doing)
        return EngineStream(response, parse, lambda exc: self._unavailable(exc, doing))

    # -- the engine ----------------------------------------------------------------

    def _probe(self) -> Exception | None:
        """None if the engine answers its health check now, else why not."""
        try:
            response = self._client.get("/_ping", timeout=3.0)
        except httpx.HTTPError as exc:
            return self._unavailable(exc, "pinging the engine")
        if response.status_code == 200 and response.text == "OK":
            return None
        return EngineError(f"pinging the engine: {response.status_code} {response.text[:100]}")

    def ping(self) -> bool:
        """True if the engine answers its health check now."""
        return self._probe() is None

    def wait_until_ready(self, timeout: float, *, on_wait: Any = None) -> float:
        """Wait for the engine to answer; the seconds it took. GuestTimeout after `timeout`;
        EngineCertificateError at once if an engine answers with the wrong certificate."""
        start = time.monotonic()
        while (problem := self._probe()) is not None:
            if isinstance(problem, EngineCertificateError):
                raise problem
            waited = time.monotonic() - start
            if waited > timeout:
                raise GuestTimeout(
                    f"the Docker engine at {self.endpoint.docker_host} did not answer "
                    f"within {timeout:.0f} s"
                )
            if on_wait:
                on_wait(waited)
            time.sleep(0.25)
        return time.monotonic() - start

    def version(self) -> dict[str, Any]:
        return dict(self._call("GET", "/version", "reading the engine version").json())

    def info(self) -> dict[str, Any]:
        return dict(self._call("GET", "/info", "reading engine info").json())

    def events(
        self,
        *,
        since: Since = None,
        until: Since = None,
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> EngineStream[dict[str, Any]]:
        """The engine's events (container, image, network...) as they happen, from
        `since` if given; endless unless `until`. Close it to stop (from any thread)."""
        params = _query(since=_timestamp(since), until=_timestamp(until), filters=filters)
        return self._stream(
            "GET", "/events", "following engine events", _json_objects, params=params
        )

    # -- containers ----------------------------------------------------------------

    def containers(
        self,
        *,
        all: bool = True,  # noqa: A002
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[dict[str, Any]]:
        params = _query(all=all, filters=filters)
        return list(
            self._call("GET", "/containers/json", "listing containers", params=params).json()
        )

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(
            self._call(
                "GET", f"/containers/{_c(container)}/json", f"inspecting container {container}"
            ).json()
        )

    def create_container(self, spec: ContainerSpec) -> str:
        """Create a container (not started); its id. Checks `spec` before any request."""
        params, body = spec.request()
        response = self._call(
            "POST",
            "/containers/create",
            f"creating a container from {spec.image}",
            params=params,
            json_body=body,
        )
        return str(response.json()["Id"])

    def create(
        self, image: str, command: Sequence[str] | None = None, *, name: str | None = None
    ) -> str:
        """Create a container of `image` running `command`; its id."""
        return self.create_container(ContainerSpec(image=image, command=command, name=name))

    def run(
        self,
        spec: ContainerSpec | str,
        command: Sequence[str] | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """Create and start a container (a spec, or an image with a command); its id.
        Nothing is left if the start fails. Images are never pulled: a missing one is
        NotFound."""
        if isinstance(spec, str):
            spec = ContainerSpec(image=spec, command=command, name=name)
        elif command is not None or name is not None:
            raise TypeError("give the command and name in the ContainerSpec")
        cid = self.create_container(spec)
        try:
            self.start(cid)
        except BaseException:
            with contextlib.suppress(DockvisorError):
                self.remove(cid, force=True, volumes=True)
            raise
        return cid

    def start(self, container: str) -> None:
        self._call("POST", f"/containers/{_c(container)}/start", f"starting container {container}")

    def stop(self, container: str, *, timeout: int = 10) -> None:
        """Stop it: SIGTERM, then SIGKILL after `timeout` seconds."""
        self._call(
            "POST",
            f"/containers/{_c(container)}/stop",
            f"stopping container {container}",
            params=_query(t=timeout),
            timeout=self._timeout + timeout,
        )

    def restart(self, container: str, *, timeout: int = 10) -> None:
        self._call(
            "POST",
            f"/containers/{_c(container)}/restart",
            f"restarting container {container}",
            params=_query(t=timeout),
            timeout=self._timeout + timeout,
        )

    def pause(self, container: str) -> None:
        self._call("POST", f"/containers/{_c(container)}/pause", f"pausing container {container}")

    def unpause(self, container: str) -> None:
        self._call(
            "POST", f"/containers/{_c(container)}/unpause", f"unpausing container {container}"
        )

    def kill(self, container: str, signal: str | int = "SIGKILL") -> None:
        self._call(
            "POST",
            f"/containers/{_c(container)}/kill",
            f"sending {signal} to container {container}",
            params=_query(signal=signal),
        )

    def remove(self, container: str, *, force: bool = False, volumes: bool = False) -> None:
        """Remove it (`force`: even running); `volumes`: its anonymous volumes too."""
        self._call(
            "DELETE",
            f"/containers/{_c(container)}",
            f"removing container {container}",
            params=_query(force=force, v=volumes),
        )

    def wait(self, container: str, timeout: float = 60.0) -> int:
        """Wait for it to stop; its exit status."""
        response = self._call(
            "POST",
            f"/containers/{_c(container)}/wait",
            f"waiting for container {container}",
            timeout=httpx.Timeout(self._timeout, read=timeout),
        )
        return int(response.json()["StatusCode"])

    def _logs_query(
        self,
        stdout: bool,
        stderr: bool,
        tail: int | None,
        timestamps: bool,
        since: Since,
        follow: bool,
    ) -> dict[str, str]:
        if tail is not None and tail < 0:
            raise InvalidInput(f"tail must be 0 or more lines, not {tail}")
        return _query(
            stdout=stdout,
            stderr=stderr,
            timestamps=timestamps,
            follow=follow,
            tail="all" if tail is None else tail,
            since=_timestamp(since),
        )

    def logs(
        self,
        container: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        tail: int | None = None,
        timestamps: bool = False,
        since: Since = None,
    ) -> str:
        """What the container printed so far, stdout and stderr in the order written."""
        tty = bool(self.inspect(container)["Config"].get("Tty"))
        params = self._logs_query(stdout, stderr, tail, timestamps, since, follow=False)
        response = self._call(
            "GET",
            f"/containers/{_c(container)}/logs",
            f"reading logs of {container}",
            params=params,
        )
        frames = _raw_frames if tty else _frames
        return b"".join(data for _, data in frames([response.content])).decode(errors="replace")

    def follow_logs(
        self,
        container: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        tail: int | None = None,
        timestamps: bool = False,
        since: Since = None,
    ) -> EngineStream[tuple[str, bytes]]:
        """("stdout" | "stderr", bytes) as the container writes them, until it stops or
        the stream is closed. A TTY container's output is all "stdout"."""
        tty = bool(self.inspect(container)["Config"].get("Tty"))
        params = self._logs_query(stdout, stderr, tail, timestamps, since, follow=True)
        return self._stream(
            "GET",
            f"/containers/{_c(container)}/logs",
            f"following logs of {container}",
            _raw_frames if tty else _frames,
            params=params,
        )

    def run_to_completion(
        self, image: str, command: Sequence[str], *, timeout: float = 60.0
    ) -> str:
        """Run a command in a fresh container, remove it, and return what it printed."""
        cid = self.run(image, command)
        try:
            status = self.wait(cid, timeout)
            output = self.logs(cid)
        finally:
            self.remove(cid, force=True)
        if status != 0:
            raise EngineError(f"{' '.join(command)} exited with {status}: {output.strip()}")
        return output

    def stats(self, container: str) -> dict[str, Any]:
        """One sample of its resource use (memory_stats, cpu_stats, precpu_stats...)."""
        response = self._call(
            "GET",
            f"/containers/{_c(container)}/stats",
            f"reading stats of {container}",
            params=_query(stream=False),
            timeout=self._timeout + 10,
        )
        return dict(response.json())

    def stream_stats(self, container: str) -> EngineStream[dict[str, Any]]:
        """A sample of its resource use about every second, until closed."""
        return self._stream(
            "GET",
            f"/containers/{_c(container)}/stats",
            f"following stats of {container}",
            _json_objects,
            params=_query(stream=True),
        )

    # -- exec ----------------------------------------------------------------------

    def _create_exec(
        self,
        container: str,
        command: Sequence[str],
        *,
        stdin: bool,
        tty: bool,
        env: Mapping[str, str] | None,
        workdir: str | None,
        user: str | None,
    ) -> str:
        if isinstance(command, str) or not command:
            raise InvalidInput("give the command as a non-empty list of arguments")
        body: dict[str, Any] = {
            "Cmd": list(command),
            "AttachStdin": stdin,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": tty,
        }
        if env:
            body["Env"] = [f"{k}={v}" for k, v in env.items()]
        if workdir:
            body["WorkingDir"] = workdir
        if user:
            body["User"] = user
        response = self._call(
            "POST",
            f"/containers/{_c(container)}/exec",
            f"starting {command[0]} in container {container}",
            json_body=body,
        )
        return str(response.json()["Id"])

    def exec_run(
        self,
        container: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a command in a running container, without input; its exit code and output.
        `timeout` bounds the wait between two pieces of output (None: no bound)."""
        exec_id = self._create_exec(
            container, command, stdin=False, tty=False, env=env, workdir=workdir, user=user
        )
        response = self._call(
            "POST",
            f"/exec/{exec_id}/start",
            f"running {command[0]} in container {container}",
            json_body={"Detach": False, "Tty": False},
            # The engine hijacks this connection and ends the output by closing it; without
            # "close" here httpcore would pool it again (h11 keeps an until-close response's
            # connection alive).
            headers={"Connection": "close"},
            timeout=httpx.Timeout(self._timeout, read=timeout),
        )
        out, err = demultiplex(response.content)
        return ExecResult(self._exit_code(exec_id), out, err)

    def _exit_code(self, exec_id: str) -> int:
        deadline = time.monotonic() + self._timeout
        while True:
            state = self.exec_inspect(exec_id)
            if not state.get("Running") and state.get("ExitCode") is not None:
                return int(state["ExitCode"])
            if time.monotonic() > deadline:
                raise EngineError(f"exec {exec_id} did not report its exit code")
            time.sleep(0.05)

    def exec_socket(
        self,
        container: str,
        command: Sequence[str],
        *,
        tty: bool = True,
        stdin: bool = True,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecSocket:
        """Start an interactive command in a running container; its hijacked connection
        (blocking, no timeout: set one on `.sock` if you want)."""
        exec_id = self._create_exec(
            container, command, stdin=stdin, tty=tty, env=env, workdir=workdir, user=user
        )
        doing = f"attaching to {command[0]} in container {container}"
        body = json.dumps({"Detach": False, "Tty": tty}).encode()
        host = f"[{self.endpoint.host}]" if ":" in self.endpoint.host else self.endpoint.host
        head = (
            f"POST /{API_VERSION}/exec/{exec_id}/start HTTP/1.1\r\n"
            f"Host: {host}:{self.endpoint.port}\r\n"
            "User-Agent: dockvisor\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: Upgrade\r\n"
            "Upgrade: tcp\r\n\r\n"
        ).encode()
        conn = self._connect(doing)
        try:
            conn.sendall(head + body)
            status, headers, rest = _read_head(conn)
            if status in (101, 200):
                session = ExecSocket(conn, exec_id, rest)
                session.sock.settimeout(None)
                return session
            size = int(headers.get("content-length", "0"))
            while len(rest) < size and (chunk := conn.recv(_CHUNK)):
                rest += chunk
        except OSError as exc:
            conn.close()
            raise self._unavailable(exc, doing) from exc
        conn.close()
        try:
            message = str(json.loads(rest).get("message", rest.decode(errors="replace")))
        except ValueError:
            message = rest.decode(errors="replace")
        raise _error_for(status, message or f"HTTP {status}", doing)

    def _connect(self, doing: str) -> socket.socket | _TlsConnection:
        """A new connection to the engine; when it speaks TLS, TLS set up and the engine's
        certificate and name checked (in memory over the socket, so it can half-close)."""
        try:
            sock = socket.create_connection(
                (self.endpoint.host, self.endpoint.port), timeout=self._timeout
            )
        except OSError as exc:
            raise self._unavailable(exc, doing) from exc
        if self._ssl_context is None:
            return sock
        conn = _TlsConnection(sock, self._ssl_context, self._server_name)
        try:
            conn.handshake()
            return conn
        except OSError as exc:
            sock.close()
            raise self._unavailable(exc, doing) from exc

    def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        """Tell an exec's TTY its new size (rows, columns)."""
        self._call(
            "POST",
            f"/exec/{exec_id}/resize",
            f"resizing exec {exec_id}",
            params=_query(h=height, w=width),
        )

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        """An exec's state: Running, ExitCode (None while it runs), Pid..."""
        return dict(self._call("GET", f"/exec/{exec_id}/json", f"inspecting exec {exec_id}").json())

    # -- images --------------------------------------------------------------------

    def images(
        self,
        *,
        all: bool = False,  # noqa: A002
        filters: Mapping[str, Sequence[str]] | None = None,
    ) -> list[dict[str, Any]]:
        params = _query(all=all, filters=filters)
        return list(self._call("GET", "/images/json", "listing images", params=params).json())

    def inspect_image(self, image: str) -> dict[str, Any]:
        return dict(
            self._call("GET", f"/images/{_i(image)}/json", f"inspecting image {image}").json()
        )

    def tag_image(self, image: str, repository: str, tag: str = "latest") -> str:
        """Give `image` another name; that name."""
        self._call(
            "POST",
            f"/images/{_i(image)}/tag",
            f"tagging image {image}",
            params=_query(repo=repository, tag=tag),
        )
        return f"{repository}:{tag}"

    def remove_image(
        self, image: str, *, force: bool = False, prune: bool = True
    ) -> list[dict[str, Any]]:
        """Remove a name of an image (the image itself with its last name); what went."""
        response = self._call(
            "DELETE",
            f"/images/{_i(image)}",
            f"removing image {image}",
            params=_query(force=force, noprune=not prune),
        )
        return list(response.json())

    def save_image(self, image: str) -> EngineStream[bytes]:
        """`docker save`: the image as a tarball, streamed."""
        return self._stream(
            "GET",
            f"/images/{_i(image)}/get",
            f"exporting image {image}",
            lambda chunks: (c for c in chunks if c),
        )

    def load_image(self, tarball: IO[bytes] | Iterable[bytes] | bytes) -> list[str]:
        """`docker load` of a `docker save` tarball, streamed up; the images loaded
        (names, or ids of unnamed ones)."""
        messages = self._progress(
            "POST", "/images/load", "loading an image tarball", tarball, params=_query(quiet=True)
        )
        loaded = []
        for message in messages:
            text = str(message.get("stream", ""))
            for prefix in ("Loaded image: ", "Loaded image ID: "):
                if text.startswith(prefix):
                    loaded.append(text[len(prefix) :].strip())
        return loaded

    def import_image(
        self,
        rootfs_tarball: IO[bytes] | Iterable[bytes] | bytes,
        repository: str,
        tag: str = "latest",
    ) -> str:
        """`docker import`: a root filesystem tarball as an image named repository:tag;
        the image's id."""
        messages = self._progress(
            "POST",
            "/images/create",
            f"importing {repository}:{tag}",
            rootfs_tarball,
            params=_query(fromSrc="-", repo=repository, tag=tag),
        )
        ids = [str(m["status"]) for m in messages if str(m.get("status", "")).startswith("sha")]
        if not ids:
            raise EngineError(f"importing {repository}:{tag}: the engine named no image")
        return ids[-1]

    def _progress(
        self,
        method: str,
        path: str,
        doing: str,
        body: IO[bytes] | Iterable[bytes] | bytes,
        *,
        params: Mapping[str, str],
    ) -> list[dict[str, Any]]:
        """Upload `body` and read the engine's JSON progress messages; an error among
        them is raised with the engine's text."""
        stream = self._stream(
            method,
            path,
            doing,
            _json_objects,
            params=params,
            content=_chunks(body),
            headers={"Content-Type": "application/x-tar"},
        )
        with stream:
            messages = list(stream)
        for message in messages:
            if "error" in message or "errorDetail" in message:
                detail = message.get("errorDetail") or {}
                text = str(detail.get("message") or message.get("error"))
                raise _error_for(int(detail.get("code") or 500), text, doing)
        return messages


def _read_head(sock: socket.socket | _TlsConnection) -> tuple[int, dict[str, str], bytes]:
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
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _c(container: str) -> str:
    return quote(container, safe="")


def _i(image: str) -> str:
    return quote(image, safe="/:@")
