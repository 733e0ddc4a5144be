"""The engine gateway: the stock docker CLI talks to a VM's Docker engine through dockvisor.

A small asyncio HTTP/1.1 proxy, apart from the REST API because ASGI cannot hand over a
raw connection, which `docker attach`, `docker exec -it` and `docker run` need (the CLI
asks for `Upgrade: tcp`, the engine answers `101 UPGRADED`, and the connection becomes a
bidirectional byte stream).

A developer points the CLI at a VM with a path prefix and carries a dockvisor API token
in a header that the CLI adds to every request (`_ping` and hijacked ones included)::

    mkdir -p ~/.docker-dv && echo '{"HttpHeaders": {"Authorization": "Bearer TOKEN"}}' \\
        > ~/.docker-dv/config.json
    DOCKER_CONFIG=~/.docker-dv DOCKER_HOST=tcp://127.0.0.1:8081/vms/web docker ps

Each request (every one, also the second and later ones on a kept-alive connection) goes
to `GatewayPolicy.admit` with the path as the engine will see it (`/v1.41/containers/json`,
the `/vms/<vm>` prefix removed). A refusal is a `DockvisorError`; the client gets its HTTP
status and `{"message": ...}`, the engine's own error format, which the CLI prints as
`Error response from daemon: ...`. An admitted request is forwarded to the `EngineRoute`
the admission names, over TLS, without the `Authorization` header and any `X-Dockvisor-*`
header, its body streamed both ways (any size, never held in memory). A `101` from the
engine is passed on and the two connections are spliced raw, half-closes included: when
the client stops writing (stdin EOF in `docker exec -i`), the engine gets a TLS
close_notify and its output keeps flowing until it closes.

Interface::

    gateway = EngineGateway(policy, host="127.0.0.1", port=8081)
    gateway.start()   # own event loop in a daemon thread; returns once listening
    gateway.port      # the bound port (useful with port=0)
    gateway.stop()

`policy.admit(...)` runs in a worker thread (it may use the database). The admission's
`finished(status)` is called exactly once per admitted request, in one reporter thread
(in order, never on the event loop, not awaited), with the engine's status: once the
answer has been passed on, or after a second of a stream that goes on (`logs -f`,
`events`), or at the switch for a hijacked stream (101). When the engine cannot be
reached or fails before answering, it gets the status the gateway answered (502 or
503); 499 when the client left before any answer. Refused requests never get an
admission: auditing those is the policy's business, in `admit`.

Upstream connections are pooled per `EngineRoute` (keep one route object, and so one
`ssl.SSLContext`, per VM to benefit) and reused only after a complete, non-upgraded
exchange that both sides allow to keep alive; a stale pooled connection is retried once
on a fresh one when the request body (if any) was small enough to replay.

The gateway listens on plain HTTP: keep it on the loopback, or behind a TLS terminator
that supports half-close. Tokens and `Authorization` headers are never logged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar
from urllib.parse import unquote

import h11

from dockvisor import errors
from dockvisor.api.problems import status_of
from dockvisor.engines.tls import send_close_notify

__all__ = ["Admission", "EngineGateway", "EngineRoute", "GatewayPolicy"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to open a TCP+TLS connection to an engine
LINGER_TIMEOUT = 10.0  # seconds to drain a request body the engine did not read
HALF_CLOSE_GRACE = 2.0  # seconds a client may keep writing after the engine closed
WATCH_AFTER = 0.05  # seconds after which an answer in progress watches for the client leaving
REPORT_AFTER = 1.0  # seconds of streaming after which finished() is called, not at the end
POOL_IDLE_MAX = 4  # idle upstream connections kept per route
POOL_IDLE_AGE = 30.0  # seconds an idle upstream connection is kept
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size can be resent on a fresh connection
HEADER_LIMIT = 256 * 1024  # X-Registry-Config can be large
_CHUNK = 64 * 1024

# Request headers that never reach the engine: credentials for dockvisor, and hop-by-hop
# headers that concern only the client's connection (the Upgrade request is rebuilt).
_DROP_REQUEST = {
    b"authorization",
    b"proxy-authorization",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
    b"host",
}
_DROP_RESPONSE = {b"connection", b"keep-alive", b"proxy-connection"}
_PRIVATE_PREFIX = b"x-dockvisor-"


@dataclass(frozen=True)
class EngineRoute:
    """Where an admitted request goes: one VM's Docker engine."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None  # None: plain TCP (tests only)
    server_hostname: str | None = None  # the name the engine's certificate must carry


class Admission(Protocol):
    """The policy's yes to one request."""

    @property
    def route(self) -> EngineRoute: ...

    def finished(self, status: int) -> None:
        """Called once, in the reporter thread, with the engine's status (or 499/502/503)."""


class GatewayPolicy(Protocol):
    """Also optional: `admit_now(**same)` -> Admission | None, answering at once from
    memory (no blocking) when it can; None falls back to `admit` in a thread."""

    def admit(
        self, *, authorization: str | None, vm: str, method: str, path: str, query: str
    ) -> Admission:
        """Admit one request or raise a `DockvisorError` (the client gets its status).

        Blocking (database work): the gateway runs it in a worker thread. `vm` is the
        percent-decoded `/vms/<vm>` segment, `path` the rest as the engine will see it
        (`/v1.41/containers/json`, still percent-encoded), `query` without the `?`.
        """
        ...


# ---------------------------------------------------------------------------------------
# Byte streams: plain TCP, or TLS over TCP with a half-close that asyncio's own TLS
# transport lacks (it cannot send close_notify and keep reading).


class _Stream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        """Some bytes, or b"" at the end of the stream."""
        return await self._reader.read(_CHUNK)

    def write(self, data: bytes) -> None:
        if data:
            self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        """Stop writing and keep reading."""
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()

    @property
    def stale(self) -> bool:
        """True when the peer has closed or sent something unasked (an idle connection
        that is not idle: an engine closing it says so with a TLS close_notify)."""
        unread = len(getattr(self._reader, "_buffer", b""))  # no public accessor
        return unread > 0 or self._reader.at_eof() or self._writer.is_closing()


class _TlsStream(_Stream):
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        server_hostname: str | None,
    ) -> None:
        super().__init__(reader, writer)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._pending: list[bytes] = []  # plaintext read ahead of a half-close
        self._eof_sent = False

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _fill(self) -> None:
        self._flush()
        data = await self._reader.read(_CHUNK)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    raise ConnectionResetError("closed during the TLS handshake") from None
                await self._fill()
        self._flush()

    async def read(self) -> bytes:
        if self._pending:
            return self._pending.pop(0)
        while True:
            try:
                data = self._tls.read(_CHUNK)
                self._flush()
                return data
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    return b""
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    def write(self, data: bytes) -> None:
        if data:
            self._tls.write(data)
            self._flush()

    def write_eof(self) -> None:
        if self._eof_sent or self._writer.is_closing():
            return
        self._eof_sent = True
        if plain := send_close_notify(self._tls):
            self._pending.append(plain)
        self._flush()

    @property
    def stale(self) -> bool:
        return super().stale or bool(self._pending) or self._tls.pending() > 0


# ---------------------------------------------------------------------------------------
# Failures inside one exchange.


class _ClientGone(Exception):
    """The client closed or broke its connection; nothing more can be said to it."""


class _UpstreamFailed(Exception):
    def __init__(self, message: str, *, status: int = 502, replayable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.replayable = replayable  # nothing of the response came: safe to try again


_Event: TypeAlias = "h11.Event | type[h11.PAUSED]"
_T = TypeVar("_T")


class _Reporter:
    """One thread that calls `finished(status)` for every admission, in order.

    A queue, not the event loop's executor: no wake-up of the loop when a call is done,
    and audit records in the order the answers came.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[int], None], int] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="engine-gateway-audit", daemon=True)
        self._thread.start()

    def put(self, finished: Callable[[int], None], status: int) -> None:
        self._queue.put((finished, status))

    def close(self) -> None:
        """Return once every queued call has been made."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            finished, status = item
            try:
                finished(status)
            except Exception:
                log.exception("engine gateway: finished(%d) failed", status)


class _Report:
    """Calls one admission's `finished(status)` once, through the reporter thread.

    The status is known at the response head. It is reported once the answer has been
    passed on, so that the reporter does not compete with relaying it, or after
    REPORT_AFTER seconds of a stream that goes on (`logs -f`), whichever comes first.
    """

    def __init__(self, reporter: _Reporter, finished: Callable[[int], None]) -> None:
        self._reporter = reporter
        self._finished = finished
        self._status: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def known(self, status: int) -> None:
        self._status = status
        self._timer = asyncio.get_running_loop().call_later(REPORT_AFTER, self.now)

    def now(self, fallback: int = 499) -> None:
        """Report the engine's status, or `fallback` if none came; only the first time."""
        if self._timer is not None:
            self._timer.cancel()
        if self._done:
            return
        self._done = True
        self._reporter.put(self._finished, self._status if self._status is not None else fallback)


async def _client_event(conn: h11.Connection, client: _Stream) -> _Event:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        try:
            data = await client.read()
        except (OSError, ssl.SSLError) as exc:
            raise _ClientGone(str(exc)) from exc
        conn.receive_data(data)


class _RequestBody:
    """The client's request body, read once, with its first bytes kept for a replay.

    `kept` holds the data handed out so far while it stays under REPLAY_LIMIT; `end` is
    set once the end of the body has been handed out.
    """

    def __init__(self, conn: h11.Connection, client: _Stream, method: bytes) -> None:
        self._conn = conn
        self._client = client
        self.method = method
        self._ahead: list[h11.Data | h11.EndOfMessage] = []
        self.kept: list[h11.Data] = []
        self.kept_size = 0
        self.replayable = True
        self.end: h11.EndOfMessage | None = None

    def take_buffered(self) -> None:
        """Parse what has already arrived (bounded by one read), without waiting."""
        while not self._ahead or not isinstance(self._ahead[-1], h11.EndOfMessage):
            event = self._conn.next_event()
            if not isinstance(event, h11.Data | h11.EndOfMessage):
                break  # NEED_DATA
            self._ahead.append(event)

    @property
    def all_here(self) -> bool:
        """True when the rest of the body can be handed out without waiting."""
        return self.end is not None or (
            bool(self._ahead) and isinstance(self._ahead[-1], h11.EndOfMessage)
        )

    async def next(self) -> h11.Data | h11.EndOfMessage:
        if self._ahead:
            event: _Event = self._ahead.pop(0)
        else:
            event = await _client_event(self._conn, self._client)
        if isinstance(event, h11.Data):
            self.kept_size += len(event.data)
            if self.replayable and self.kept_size <= REPLAY_LIMIT:
                self.kept.append(event)
            else:
                self.replayable, self.kept = False, []
            return event
        if isinstance(event, h11.EndOfMessage):
            self.end = event
            return event
        raise _ClientGone("the client closed the connection in the middle of its request")

    async def discard(self, timeout: float) -> bool:
        """Read and drop the rest of the body; True if it ended in time."""
        try:
            async with asyncio.timeout(timeout):
                while self.end is None:
                    self.replayable = False
                    await self.next()
        except (TimeoutError, _ClientGone, h11.RemoteProtocolError):
            return False
        return True


def _quiet(task: asyncio.Task[_T]) -> asyncio.Task[_T]:
    """Mark a task's failure as seen even if nobody awaits it (at shutdown)."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def _settle(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task if it still runs, and collect its outcome whatever it was."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _json_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"message": message}).encode()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    return headers, body


def _header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names listed in Connection: hop-by-hop, never forwarded."""
    return {t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",")}


def _wants_upgrade(request: h11.Request) -> bool:
    tokens = _connection_tokens(request.headers)
    return b"upgrade" in tokens and any(k == b"upgrade" for k, _ in request.headers)


# ---------------------------------------------------------------------------------------
# The pool of idle upstream connections.


class _Pool:
    def __init__(self) -> None:
        self._idle: dict[EngineRoute, list[tuple[float, _Stream]]] = {}

    def take(self, route: EngineRoute) -> _Stream | None:
        idle = self._idle.get(route)
        now = time.monotonic()
        while idle:
            since, stream = idle.pop()
            if now - since < POOL_IDLE_AGE and not stream.stale:
                return stream
            stream.close()
        return None

    def give(self, route: EngineRoute, stream: _Stream) -> None:
        idle = self._idle.setdefault(route, [])
        now = time.monotonic()
        for since, old in [e for e in idle if now - e[0] >= POOL_IDLE_AGE]:
            idle.remove((since, old))
            old.close()
        if len(idle) >= POOL_IDLE_MAX or stream.stale:
            stream.close()
        else:
            idle.append((now, stream))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, stream in idle:
                stream.close()
        self._idle.clear()


# ---------------------------------------------------------------------------------------


class EngineGateway:
    """The listener; see the module docstring."""

    def __init__(self, policy: GatewayPolicy, host: str = "127.0.0.1", port: int = 8081) -> None:
        self._policy = policy
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._pool = _Pool()
        self._clients: set[asyncio.Task[Any]] = set()
        self._reporter: _Reporter | None = None

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        """Listen, serving from a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the engine gateway is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._reporter = _Reporter()
        loop = asyncio.new_event_loop()
        loop.set_default_executor(
            concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="engine-gw")
        )
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="engine-gateway", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            self._reporter.close()
            raise failure[0]
        log.info("engine gateway listening on %s:%d", self._host, self._port)

    def stop(self) -> None:
        """Close the listener and every connection; wait for the thread to end."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        stopping = self._stopping
        if stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended already
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=30)
        if self._reporter is not None:
            self._reporter.close()
        self._thread = None
        self._loop = None

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(
            self._accept, self._host, self._port, limit=_CHUNK, backlog=256
        )
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.gather(*self._clients, return_exceptions=True)
            self._pool.close()
        await asyncio.get_running_loop().shutdown_default_executor()  # admits under way

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        client = _Stream(reader, writer)
        try:
            await self._serve_client(client)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("engine gateway: unexpected failure on a client connection")
        finally:
            self._clients.discard(task)
            client.close()

    # -- one client connection, many requests ------------------------------------------

    async def _serve_client(self, client: _Stream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_LIMIT)
        while True:
            try:
                event = await _client_event(conn, client)
            except h11.RemoteProtocolError as exc:
                await self._answer_bad_request(conn, client, exc)
                return
            except _ClientGone:
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or the client broke off
            try:
                keep = await self._exchange(conn, client, event)
            except (_ClientGone, h11.RemoteProtocolError):
                return
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer_bad_request(
        self, conn: h11.Connection, client: _Stream, exc: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state is not h11.SEND_RESPONSE:
            return
        headers, body = _json_error(exc.error_status_hint, f"bad request: {exc}")
        try:
            client.write(
                conn.send(h11.Response(status_code=exc.error_status_hint, headers=headers))
            )
            client.write(conn.send(h11.Data(data=body)))
            client.write(conn.send(h11.EndOfMessage()))
            await client.drain()
        except (OSError, h11.LocalProtocolError):
            pass

    async def _answer(
        self,
        conn: h11.Connection,
        client: _Stream,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        headers, body = _json_error(status, message)
        data = conn.send(h11.Response(status_code=status, headers=headers + (extra or []))) or b""
        if not head_only:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        try:
            client.write(data)
            await client.drain()
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    async def _refuse(
        self,
        conn: h11.Connection,
        client: _Stream,
        body: _RequestBody,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        """Answer an error ourselves, then drain the request body; True to keep alive."""
        head_only = body.method == b"HEAD"
        await self._answer(conn, client, status, message, extra, head_only=head_only)
        return await body.discard(LINGER_TIMEOUT)

    async def _exchange(self, conn: h11.Connection, client: _Stream, request: h11.Request) -> bool:
        """Admit and relay one request; True if the client connection may carry another."""
        body = _RequestBody(conn, client, request.method)
        body.take_buffered()
        target = request.target.decode("ascii", "replace")
        raw_path, _, query = target.partition("?")
        parts = raw_path.split("/", 3)  # "", "vms", vm, rest
        if len(parts) < 4 or parts[0] != "" or parts[1] != "vms" or not parts[2]:
            return await self._refuse(
                conn,
                client,
                body,
                404,
                "this is dockvisor's engine gateway: set DOCKER_HOST=tcp://HOST:PORT/vms/<vm>",
            )
        vm, path = unquote(parts[2]), "/" + parts[3]
        method = request.method.decode("ascii", "replace")
        # A policy may answer from memory at once (optional `admit_now`); else a thread.
        fast = getattr(self._policy, "admit_now", None)
        asked: dict[str, Any] = {
            "authorization": _header(request, b"authorization"),
            "vm": vm,
            "method": method,
            "path": path,
            "query": query,
        }
        try:
            known: Admission | None = fast(**asked) if fast is not None else None
            admission: Admission = (
                known if known is not None else await asyncio.to_thread(self._policy.admit, **asked)
            )
        except errors.DockvisorError as exc:
            extra: list[tuple[bytes, bytes]] = []
            if isinstance(exc, errors.Unauthorized):
                extra.append((b"WWW-Authenticate", b'Bearer realm="dockvisor"'))
            if isinstance(exc, errors.Throttled):
                extra.append((b"Retry-After", str(max(1, int(exc.retry_after))).encode()))
            return await self._refuse(conn, client, body, status_of(exc), str(exc), extra)
        except Exception as exc:
            log.exception("engine gateway: the policy failed on %s %s", method, path)
            message = f"dockvisor could not check this request: {type(exc).__name__}"
            return await self._refuse(conn, client, body, 500, message)

        assert self._reporter is not None
        report = _Report(self._reporter, admission.finished)
        upstream_target = f"{path}?{query}" if query else path
        try:
            return await self._forward(
                conn, client, request, body, admission.route, vm, upstream_target, report
            )
        except _UpstreamFailed as exc:
            log.info("engine gateway: VM %r: %s", vm, exc)
            report.now(exc.status)
            if conn.our_state is not h11.SEND_RESPONSE:
                return False  # the response had begun: all we can do is close
            message = f"Docker engine of VM {vm!r}: {exc}"
            return await self._refuse(conn, client, body, exc.status, message)
        finally:
            report.now(499)  # if nothing else was: the client left before the answer

    # -- relaying to the engine -------------------------------------------------------

    async def _connect(self, route: EngineRoute) -> _Stream:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(route.host, route.port, limit=_CHUNK)
                if route.ssl_context is None:
                    return _Stream(reader, writer)
                stream = _TlsStream(reader, writer, route.ssl_context, route.server_hostname)
                try:
                    await stream.handshake()
                except BaseException:
                    writer.close()
                    raise
                return stream
        except TimeoutError:
            raise _UpstreamFailed(
                f"no answer from {route.host}:{route.port} in {CONNECT_TIMEOUT:g} s", status=503
            ) from None
        except ssl.SSLError as exc:
            raise _UpstreamFailed(f"TLS with {route.host}:{route.port} failed: {exc}") from exc
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise _UpstreamFailed(
                f"cannot connect to {route.host}:{route.port}: {reason}", status=503
            ) from exc

    async def _forward(
        self,
        conn: h11.Connection,
        client: _Stream,
        request: h11.Request,
        body: _RequestBody,
        route: EngineRoute,
        vm: str,
        target: str,
        report: _Report,
    ) -> bool:
        upgrade = _wants_upgrade(request)
        drop = _DROP_REQUEST | _connection_tokens(request.headers)
        headers = [
            (k, v)
            for k, v in request.headers.raw_items()
            if k.lower() not in drop and not k.lower().startswith(_PRIVATE_PREFIX)
        ]
        host = route.server_hostname or route.host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        headers.insert(0, (b"Host", f"{host}:{route.port}".encode()))
        if upgrade:
            upgrade_to = [(b"Upgrade", v) for k, v in request.headers if k == b"upgrade"]
            headers += [(b"Connection", b"Upgrade"), *upgrade_to]
        outgoing = h11.Request(method=request.method, target=target.encode(), headers=headers)

        for attempt in (1, 2):
            upstream = self._pool.take(route)
            reused = upstream is not None
            if upstream is None:
                upstream = await self._connect(route)
            try:
                return await self._relay(
                    conn, client, outgoing, body, upstream, route, report, upgrade=upgrade
                )
            except _UpstreamFailed as exc:
                upstream.close()
                if attempt == 1 and reused and exc.replayable and body.replayable:
                    log.debug("engine gateway: VM %r: stale pooled connection, retrying", vm)
                    continue
                raise
            except BaseException:
                upstream.close()
                raise
        raise AssertionError("unreachable")

    async def _relay(
        self,
        conn: h11.Connection,
        client: _Stream,
        outgoing: h11.Request,
        body: _RequestBody,
        upstream: _Stream,
        route: EngineRoute,
        report: _Report,
        *,
        upgrade: bool,
    ) -> bool:
        """One exchange on one upstream connection; True if the client may send another."""
        uconn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEADER_LIMIT)
        head = bytearray(uconn.send(outgoing) or b"")
        for kept in list(body.kept):  # a replay on a fresh connection
            head += uconn.send(kept) or b""
        if body.end is None and body.all_here:  # small bodies: with the head, in one write
            while body.end is None:
                head += uconn.send(await body.next()) or b""
        elif body.end is not None:
            head += uconn.send(body.end) or b""
        try:
            upstream.write(bytes(head))
            await upstream.drain()
        except (OSError, ssl.SSLError) as exc:
            raise _UpstreamFailed(f"lost the engine: {exc}", replayable=True) from exc

        if body.end is None:
            outcome = await self._relay_streaming_body(conn, client, uconn, upstream, body, report)
        else:
            outcome = await self._relay_watching_client(
                conn, client, uconn, upstream, report, upgrade
            )
        if outcome == "upgraded":
            return False
        if body.end is None:  # the engine answered without reading all of the body
            upstream.close()
            return await body.discard(LINGER_TIMEOUT)
        if (
            uconn.our_state is h11.DONE
            and uconn.their_state is h11.DONE
            and uconn.trailing_data == (b"", False)
        ):
            self._pool.give(route, upstream)
        else:
            upstream.close()
        return True

    async def _relay_watching_client(
        self,
        conn: h11.Connection,
        client: _Stream,
        uconn: h11.Connection,
        upstream: _Stream,
        report: _Report,
        upgrade: bool,
    ) -> str:
        """Relay the answer inline; if it takes a while, watch for the client leaving.

        A client that leaves a quiet `logs -f` or `wait` must not keep the engine
        connection until the next line. Quick answers (most) never start the watcher.
        """
        me = asyncio.current_task()
        assert me is not None
        gone = False
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal gone
            try:
                data = await client.read()
            except OSError:
                data, upgrade_ok = b"", False
            else:
                upgrade_ok = upgrade
            if data or upgrade_ok:  # pipelined bytes, or stdin that ended before the 101
                conn.receive_data(data)
                return
            gone = True
            me.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = _quiet(asyncio.create_task(watch()))

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, start_watching)

        async def stop_watching() -> None:
            timer.cancel()
            await _settle(watcher)

        try:
            try:
                return await self._relay_response(
                    conn, client, uconn, upstream, stop_watching, report
                )
            finally:
                await stop_watching()
        except asyncio.CancelledError:
            if gone:
                me.uncancel()
                raise _ClientGone("the client left before the answer was complete") from None
            raise

    async def _relay_streaming_body(
        self,
        conn: h11.Connection,
        client: _Stream,
        uconn: h11.Connection,
        upstream: _Stream,
        body: _RequestBody,
        report: _Report,
    ) -> str:
        """Send the rest of a large body while the answer is relayed (it may come early)."""
        pump = _quiet(asyncio.create_task(self._pump_body(body, uconn, upstream)))

        async def body_sent() -> None:
            await pump  # the body is sent before the engine hijacks

        response = _quiet(
            asyncio.create_task(
                self._relay_response(conn, client, uconn, upstream, body_sent, report)
            )
        )
        try:
            done, _ = await asyncio.wait({pump, response}, return_when=asyncio.FIRST_EXCEPTION)
            if pump in done and not pump.cancelled():
                failure = pump.exception()
                if isinstance(failure, _ClientGone | h11.RemoteProtocolError):
                    raise failure
                # Else the engine stopped reading the body; its answer may still come.
            return await response
        finally:
            await _settle(response)
            await _settle(pump)

    async def _pump_body(
        self, body: _RequestBody, uconn: h11.Connection, upstream: _Stream
    ) -> None:
        """Forward the rest of the request body to the engine as it arrives."""
        while body.end is None:
            event = await body.next()
            try:
                upstream.write(uconn.send(event) or b"")
                await upstream.drain()
            except (OSError, ssl.SSLError, h11.LocalProtocolError) as exc:
                raise _UpstreamFailed(
                    f"lost the engine while sending the request: {exc}", replayable=True
                ) from exc

    async def _relay_response(
        self,
        conn: h11.Connection,
        client: _Stream,
        uconn: h11.Connection,
        upstream: _Stream,
        before_splice: Callable[[], Awaitable[None]],
        report: _Report,
    ) -> str:
        """Pass the engine's answer on as it comes; "complete" or "upgraded" at the end.

        What is ready is written to the client in one piece before waiting for the
        engine again, so a small answer is one write and a stream flows chunk by chunk.
        """
        started = False
        out = bytearray()
        while True:
            try:
                event = uconn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _UpstreamFailed(f"the engine broke the protocol: {exc}") from exc
            if event is h11.NEED_DATA:
                await self._flush_client(client, out)
                try:
                    data = await upstream.read()
                except (OSError, ssl.SSLError) as exc:
                    failure = f"lost the engine: {exc}"
                    raise _UpstreamFailed(failure, replayable=not started) from exc
                if not data and not started:
                    raise _UpstreamFailed("the engine closed the connection", replayable=True)
                uconn.receive_data(data)
            elif isinstance(event, h11.InformationalResponse):
                started = True
                if event.status_code == 101:
                    await self._flush_client(client, out)
                    await before_splice()
                    report.known(101)
                    report.now()
                    await self._splice(conn, client, uconn, upstream, event)
                    return "upgraded"
                out += conn.send(event) or b""
            elif isinstance(event, h11.Response):
                started = True
                report.known(event.status_code)
                drop = _DROP_RESPONSE | _connection_tokens(event.headers)
                headers = [(k, v) for k, v in event.headers.raw_items() if k.lower() not in drop]
                reply = h11.Response(
                    status_code=event.status_code, headers=headers, reason=event.reason
                )
                out += conn.send(reply) or b""
            elif isinstance(event, h11.Data):
                out += conn.send(event) or b""
                if len(out) >= _CHUNK:
                    await self._flush_client(client, out)
            elif isinstance(event, h11.EndOfMessage):
                out += conn.send(h11.EndOfMessage()) or b""
                await self._flush_client(client, out)
                report.now()
                return "complete"
            elif not started:  # ConnectionClosed before any answer
                raise _UpstreamFailed("the engine closed the connection", replayable=True)
            else:
                raise _UpstreamFailed("the engine closed the connection mid-response")

    async def _flush_client(self, client: _Stream, out: bytearray) -> None:
        if not out:
            return
        try:
            client.write(bytes(out))
            out.clear()
            await client.drain()
        except OSError as exc:
            raise _ClientGone(str(exc)) from exc

    async def _splice(
        self,
        conn: h11.Connection,
        client: _Stream,
        uconn: h11.Connection,
        upstream: _Stream,
        switch: h11.InformationalResponse,
    ) -> None:
        """Pass the 101 on and copy raw bytes both ways until both directions end."""
        try:
            client.write(conn.send(switch) or b"")
        except h11.LocalProtocolError as exc:  # the client did not ask for an upgrade
            raise _UpstreamFailed(f"the engine switched protocols unasked: {exc}") from exc
        from_client, client_done = conn.trailing_data
        from_engine, _ = uconn.trailing_data
        client.write(from_engine)
        upstream.write(from_client)
        if client_done:
            upstream.write_eof()

        async def copy(source: _Stream, sink: _Stream) -> None:
            try:
                while data := await source.read():
                    sink.write(data)
                    await sink.drain()
                await sink.drain()
            except (OSError, ssl.SSLError):
                sink.close()
                source.close()
                return
            sink.write_eof()

        async def nothing() -> None:
            pass

        outbound = asyncio.create_task(nothing() if client_done else copy(client, upstream))
        inbound = asyncio.create_task(copy(upstream, client))
        try:
            await inbound  # the engine's output: as long as it lasts
            try:
                async with asyncio.timeout(HALF_CLOSE_GRACE):
                    await asyncio.shield(outbound)
            except TimeoutError:
                pass
        finally:
            await _settle(outbound)
            await _settle(inbound)
            upstream.close()
