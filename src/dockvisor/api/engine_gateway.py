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

`policy.admit(...)` runs in a worker thread (it may use the database). An admission holds
only while its exchange lasts, and is asked again: an exchange still going after
RECHECK_EVERY seconds (a `logs -f`, `events`, `stats`, a `wait`, a hijacked `exec -it`,
`attach` or attached `run`, a slow answer) is watched by a task that awaits the
admission's `still_admitted()` at once and then every RECHECK_EVERY seconds, and on a
no (or an error, or no answer within CHECK_TIMEOUT) closes both sides of it: the client
connection and the engine's. A stream never outlives the credential or the privilege
that admitted it; short requests (most) end before the watch would begin and never
pay for it. The admission's
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

Before any admission, a request's framing is checked, as an intermediary must:

- one framing only (RFC 9112, section 6.3, rule 3: a message with both Transfer-Encoding
  and Content-Length "ought to be handled as an error", and an intermediary that
  forwards it must first remove Content-Length; section 11.2: request smuggling). Such a
  request is refused with 400 and the connection closed, since where its body ends is
  the very question; and what is forwarded carries exactly the one framing header the
  gateway itself read the body by.
- no body where the Docker Engine API defines none (domain/docker_api.py, `takes_body`):
  a Content-Length above 0 or any Transfer-Encoding on such a route is refused with 400.
  Below API 1.24 dockerd applies a HostConfig (privileged, binds, host namespaces) found
  in the body of `POST /containers/{id}/start`, so an Operate call could otherwise change
  what a container is. The table holds the rule; the gateway enforces it because only
  it sees the framing.

The gateway listens on plain HTTP: keep it on the loopback, or behind a TLS terminator
that supports half-close. Tokens and `Authorization` headers are never logged.

The byte streams on both sides are engines/connections.py's (TLS with half-close run by
engines/tls.py); relaying an exchange is api/gateway_relay.py's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import h11

from dockvisor import errors
from dockvisor.api.gateway_relay import (
    HEADER_LIMIT,
    LINGER_TIMEOUT,
    ClientGone,
    Pool,
    Relay,
    Report,
    Reporter,
    RequestBody,
    UpstreamFailed,
    client_event,
    connection_tokens,
    header,
    json_error,
    quiet,
    settle,
    wants_upgrade,
)
from dockvisor.api.problems import status_of
from dockvisor.domain.docker_api import classify
from dockvisor.engines.connections import CHUNK, ByteStream, open_byte_stream

__all__ = ["Admission", "EngineGateway", "EngineRoute", "GatewayPolicy"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds to open a TCP+TLS connection to an engine
RECHECK_EVERY = 1.0  # seconds between asking an exchange's admission whether it still holds
CHECK_TIMEOUT = 10.0  # seconds an admission may take to answer that: else the exchange ends

# Request headers that never reach the engine: credentials for dockvisor, and hop-by-hop
# headers that concern only the client's connection (the Upgrade request is rebuilt);
# the body's framing is written anew from what the gateway read it by.
DROP_REQUEST = {
    b"authorization",
    b"proxy-authorization",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
    b"host",
    b"content-length",
    b"transfer-encoding",
}
PRIVATE_PREFIX = b"x-dockvisor-"


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

    async def still_admitted(self) -> bool:
        """Whether the exchange may go on; asked every RECHECK_EVERY seconds once it has
        lasted that long, on the gateway's event loop (never block it: a thread for
        database work). False is final: both connections are closed at once."""


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


class EngineGateway:
    """The listener; see the module docstring."""

    def __init__(self, policy: GatewayPolicy, host: str = "127.0.0.1", port: int = 8081) -> None:
        self._policy = policy
        self._host = host
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._pool = Pool()
        self._relay = Relay(self._pool)
        self._clients: set[asyncio.Task[Any]] = set()
        self._reporter: Reporter | None = None
        # Exchanges that lasted long enough to be watched (see `_StillAdmitted`), so far.
        self.exchanges_watched = 0

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        """Listen, serving from a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the engine gateway is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._reporter = Reporter()
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
            self._accept, self._host, self._port, limit=CHUNK, backlog=256
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
        client = ByteStream(reader, writer)
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

    async def _serve_client(self, client: ByteStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_LIMIT)
        while True:
            try:
                event = await client_event(conn, client)
            except h11.RemoteProtocolError as exc:
                await self._answer_bad_request(conn, client, exc)
                return
            except ClientGone:
                return
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed, or the client broke off
            try:
                keep = await self._exchange(conn, client, event)
            except (ClientGone, h11.RemoteProtocolError):
                return
            if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _answer_bad_request(
        self, conn: h11.Connection, client: ByteStream, exc: h11.RemoteProtocolError
    ) -> None:
        if conn.our_state is not h11.SEND_RESPONSE:
            return
        headers, body = json_error(exc.error_status_hint, f"bad request: {exc}")
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
        client: ByteStream,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        head_only: bool = False,
    ) -> None:
        headers, body = json_error(status, message)
        data = conn.send(h11.Response(status_code=status, headers=headers + (extra or []))) or b""
        if not head_only:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        try:
            client.write(data)
            await client.drain()
        except OSError as exc:
            raise ClientGone(str(exc)) from exc

    async def _refuse(
        self,
        conn: h11.Connection,
        client: ByteStream,
        body: RequestBody,
        status: int,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        """Answer an error ourselves, then drain the request body; True to keep alive."""
        head_only = body.method == b"HEAD"
        await self._answer(conn, client, status, message, extra, head_only=head_only)
        return await body.discard(LINGER_TIMEOUT)

    async def _exchange(
        self, conn: h11.Connection, client: ByteStream, request: h11.Request
    ) -> bool:
        """Admit and relay one request; True if the client connection may carry another."""
        try:
            framing, has_body = _framing(request)
        except _AmbiguousFraming as exc:  # answer, then close: where its body ends is unknown
            await self._answer(conn, client, 400, str(exc))
            return False
        body = RequestBody(conn, client, request.method)
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
        judged = classify(method, path, query)
        if has_body and judged.allowed and not judged.takes_body:
            log.info("engine gateway: refused a body on %s %s (VM %r)", method, path[:100], vm)
            message = (
                f"{method} {path[:100]} carries a request body, and the Docker Engine API "
                "defines none for it: refused by dockvisor"
            )
            return await self._refuse(conn, client, body, 400, message)
        # A policy may answer from memory at once (optional `admit_now`); else a thread.
        fast = getattr(self._policy, "admit_now", None)
        asked: dict[str, Any] = {
            "authorization": header(request, b"authorization"),
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
        report = Report(self._reporter, admission.finished)
        upstream_target = f"{path}?{query}" if query else path
        watch = _StillAdmitted(admission, self._watching)
        try:
            try:
                return await self._forward(
                    conn, client, request, framing, body, admission.route, vm,
                    upstream_target, report,
                )  # fmt: skip
            except UpstreamFailed as exc:
                log.info("engine gateway: VM %r: %s", vm, exc)
                report.now(exc.status)
                if conn.our_state is not h11.SEND_RESPONSE:
                    return False  # the response had begun: all we can do is close
                message = f"Docker engine of VM {vm!r}: {exc}"
                return await self._refuse(conn, client, body, exc.status, message)
            finally:
                report.now(499)  # if nothing else was: the client left before the answer
                await watch.stop()
        except asyncio.CancelledError:
            if not watch.ended:
                raise  # the gateway stops
            watch.exchange.uncancel()
            log.info("engine gateway: VM %r: %s %s ended: no longer admitted",
                     vm, method, path[:100])  # fmt: skip
            return False  # the engine's connection is closed; closing the client's ends it

    def _watching(self) -> None:
        self.exchanges_watched += 1

    # -- relaying to the engine -------------------------------------------------------

    async def _connect(self, route: EngineRoute) -> ByteStream:
        try:
            return await open_byte_stream(
                route.host,
                route.port,
                route.ssl_context,
                route.server_hostname,
                timeout=CONNECT_TIMEOUT,
            )
        except TimeoutError:
            raise UpstreamFailed(
                f"no answer from {route.host}:{route.port} in {CONNECT_TIMEOUT:g} s", status=503
            ) from None
        except ssl.SSLError as exc:
            raise UpstreamFailed(f"TLS with {route.host}:{route.port} failed: {exc}") from exc
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise UpstreamFailed(
                f"cannot connect to {route.host}:{route.port}: {reason}", status=503
            ) from exc

    async def _forward(
        self,
        conn: h11.Connection,
        client: ByteStream,
        request: h11.Request,
        framing: list[tuple[bytes, bytes]],
        body: RequestBody,
        route: EngineRoute,
        vm: str,
        target: str,
        report: Report,
    ) -> bool:
        upgrade = wants_upgrade(request)
        drop = DROP_REQUEST | connection_tokens(request.headers)
        headers = [
            (k, v)
            for k, v in request.headers.raw_items()
            if k.lower() not in drop and not k.lower().startswith(PRIVATE_PREFIX)
        ]
        host = route.server_hostname or route.host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        headers.insert(0, (b"Host", f"{host}:{route.port}".encode()))
        headers += framing  # one framing only: the one the body was read by
        if upgrade:
            upgrade_to = [(b"Upgrade", v) for k, v in request.headers if k == b"upgrade"]
            headers += [(b"Connection", b"Upgrade"), *upgrade_to]
        outgoing = h11.Request(method=request.method, target=target.encode(), headers=headers)

        for attempt in (1, 2):
            upstream = await self._pool.take(route)
            reused = upstream is not None
            if upstream is None:
                upstream = await self._connect(route)
            try:
                return await self._relay.relay(
                    conn, client, outgoing, body, upstream, route, report, upgrade=upgrade
                )
            except UpstreamFailed as exc:
                upstream.close()
                if attempt == 1 and reused and exc.replayable and body.replayable:
                    log.debug("engine gateway: VM %r: stale pooled connection, retrying", vm)
                    continue
                raise
            except BaseException:
                upstream.close()
                raise
        raise AssertionError("unreachable")


class _StillAdmitted:
    """Keeps one exchange to its admission: made when the exchange starts, it waits
    RECHECK_EVERY seconds (a timer: a short request that ends before costs nothing
    more), then asks `admission.still_admitted()` at once and every RECHECK_EVERY
    seconds. A no, an error or no answer within CHECK_TIMEOUT sets `ended` and cancels
    the exchange's task, whose relay closes the engine's connection as it unwinds."""

    def __init__(self, admission: Admission, watching: Callable[[], None]) -> None:
        exchange = asyncio.current_task()
        assert exchange is not None
        self.exchange = exchange
        self.ended = False
        self._admission = admission
        self._watching = watching
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(RECHECK_EVERY, self._begin)

    def _begin(self) -> None:
        self._watching()
        self._task = quiet(asyncio.create_task(self._watch()))

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    still = await self._admission.still_admitted()
            except Exception:  # cannot be confirmed: not kept
                log.exception("engine gateway: asking whether an exchange is still admitted")
                still = False
            if not still:
                self.ended = True
                self.exchange.cancel()
                return
            await asyncio.sleep(RECHECK_EVERY)

    async def stop(self) -> None:
        """The exchange is over: stop asking."""
        self._timer.cancel()
        await settle(self._task)


class _AmbiguousFraming(Exception):
    """A request whose body's end cannot be known for sure."""


def _framing(request: h11.Request) -> tuple[list[tuple[bytes, bytes]], bool]:
    """The one framing header to forward, and whether the request has a body.

    RFC 9112, section 6.3: a request with both Transfer-Encoding and Content-Length
    "ought to be handled as an error", and an intermediary must never pass both on
    (request smuggling, section 11.2): refused (`_AmbiguousFraming`). h11 has already
    refused other Transfer-Encodings than chunked, several of them, and conflicting
    Content-Lengths.
    """
    chunked = [v for k, v in request.headers if k == b"transfer-encoding"]
    lengths = [v for k, v in request.headers if k == b"content-length"]
    if chunked and lengths:
        raise _AmbiguousFraming(
            "bad request: both Transfer-Encoding and Content-Length (RFC 9112, 6.3): "
            "send one framing only"
        )
    if chunked:
        return [(b"Transfer-Encoding", b"chunked")], True
    if lengths:
        return [(b"Content-Length", lengths[0])], int(lengths[0]) > 0
    return [], False
