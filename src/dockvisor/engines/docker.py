"""A client of the Docker Engine API (v1.41, Docker 20.10) for the engine inside a VM.

Speaks HTTP, or HTTPS with a client certificate, to a `DockerEndpoint` (the address
comes from the hypervisor adapter, never from a request). Over TLS the engine's
certificate must carry `endpoint.server_name`, which is not the address dialled (a
loopback forward), so one VM cannot answer for another. One pooled connection set per
`DockerEngine` for the blocking calls; what waits (a followed log, an interactive exec)
also has asynchronous calls that hold no thread (`aio`, engines/async_engine.py).

The other concerns live beside it: errors (engines/errors.py), streams and the rule that
a followed log loses nothing (engines/streams.py), the hijacked exec connection
(engines/exec_socket.py), TLS half-close (engines/tls.py), and the container spec and
its rules (domain/container_spec.py). Their public names stay importable from here.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple, TypeVar

import httpx

from dockvisor.domain.container_spec import MIN_MEMORY, ContainerSpec, PortBinding
from dockvisor.domain.model import DockerEndpoint
from dockvisor.engines.async_engine import AsyncEngine
from dockvisor.engines.calls import API_VERSION, Since, exec_body, logs_query
from dockvisor.engines.calls import c as _c
from dockvisor.engines.calls import i as _i
from dockvisor.engines.calls import query as _query
from dockvisor.engines.calls import timestamp as _timestamp
from dockvisor.engines.errors import (
    EngineCertificateError,
    EngineError,
    EngineUnavailable,
    error_for,
    unavailable,
)
from dockvisor.engines.exec_socket import ExecSocket, TlsConnection, read_head
from dockvisor.engines.streams import (
    EngineStream,
    LogFollow,
    demultiplex,
    frames,
    json_objects,
    raw_frames,
)
from dockvisor.errors import DockvisorError, GuestTimeout

__all__ = [
    "API_VERSION",
    "MIN_MEMORY",
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

T = TypeVar("T")
_CHUNK = 64 * 1024


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


def _raise_for(response: httpx.Response, doing: str) -> None:
    if response.is_success or response.status_code == 304:  # 304: already so (start, stop)
        return
    try:
        message = str(response.json().get("message", response.text))
    except ValueError:
        message = response.text
    raise error_for(response.status_code, message or response.reason_phrase, doing)


# -- the client ----------------------------------------------------------------------


class _NamedServerTransport(httpx.HTTPTransport):
    """Sends TLS server_hostname = the engine's certificate name, not the dialled host."""

    def __init__(self, server_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._server_name = server_name

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions["sni_hostname"] = self._server_name
        return super().handle_request(request)


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
        self.aio = AsyncEngine(
            endpoint.host, endpoint.port, self._ssl_context, self._server_name, timeout=timeout
        )

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    # -- plumbing ------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, doing: str) -> EngineUnavailable:
        return unavailable(exc, doing, self.endpoint.docker_host, self._server_name)

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
        return EngineStream(
            response,
            parse,
            lambda exc: self._unavailable(exc, doing),
            lambda exc: EngineError(f"{doing}: the engine sent a stream not to be read: {exc}"),
        )

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
            "GET", "/events", "following engine events", json_objects, params=params
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

    def logs_bytes(
        self,
        container: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        tail: int | None = None,
        timestamps: bool = False,
        since: Since = None,
    ) -> bytes:
        """What the container wrote so far, stdout and stderr in the order written,
        byte for byte."""
        tty = bool(self.inspect(container)["Config"].get("Tty"))
        params = logs_query(
            stdout=stdout, stderr=stderr, tail=tail, timestamps=timestamps, since=since,
            follow=False,
        )  # fmt: skip
        response = self._call(
            "GET",
            f"/containers/{_c(container)}/logs",
            f"reading logs of {container}",
            params=params,
        )
        split = raw_frames if tty else frames
        return b"".join(data for _, data in split([response.content]))

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
        """`logs_bytes` as text (bytes that are not UTF-8 replaced)."""
        raw = self.logs_bytes(
            container, stdout=stdout, stderr=stderr, tail=tail, timestamps=timestamps, since=since
        )
        return raw.decode(errors="replace")

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
        """("stdout" | "stderr", bytes) as the container writes them, until it stops
        (its last bytes included, see LogFollow) or the stream is closed. A TTY
        container's output is all "stdout"."""
        tty = bool(self.inspect(container)["Config"].get("Tty"))
        params = logs_query(
            stdout=stdout, stderr=stderr, tail=tail, timestamps=timestamps, since=since,
            follow=True,
        )  # fmt: skip
        follow = LogFollow(tty=tty, timestamps=timestamps, params=params)
        path = f"/containers/{_c(container)}/logs"
        doing = f"following logs of {container}"

        def parse(chunks: Iterable[bytes]) -> Iterator[tuple[str, bytes]]:
            for chunk in chunks:
                yield from follow.feed(chunk)
            query = follow.catch_up_params()  # it ended by itself: what it missed
            if query is None:
                return
            with self._client.stream("GET", path, params=query) as response:
                if response.status_code == 404:  # removed in the meantime
                    return
                if not response.is_success:
                    response.read()
                    _raise_for(response, doing)
                for chunk in response.iter_raw():
                    yield from follow.catch_up(chunk)

        return self._stream("GET", path, doing, parse, params=follow.params)

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
            json_objects,
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
        body = exec_body(command, stdin=stdin, tty=tty, env=env, workdir=workdir, user=user)
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
            status, headers, rest = read_head(conn)
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
        raise error_for(status, message or f"HTTP {status}", doing)

    def _connect(self, doing: str) -> socket.socket | TlsConnection:
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
        conn = TlsConnection(sock, self._ssl_context, self._server_name)
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
            json_objects,
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
                raise error_for(int(detail.get("code") or 500), text, doing)
        return messages
