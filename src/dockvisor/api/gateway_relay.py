"""Relaying one admitted exchange between a docker CLI and an engine: the engine
gateway's byte-moving half (api/engine_gateway.py is the listener and the admission).

An answer is passed on as it comes, a large request body is streamed while the answer
may already be coming, a `101` splices the two connections raw with half-closes both
ways, and a client that leaves a quiet stream (`logs -f`, `wait`) frees the engine
connection at once. The byte streams themselves are engines/connections.py's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, TypeAlias, TypeVar

import h11

from dockvisor.engines.connections import CHUNK, ByteStream

log = logging.getLogger("dockvisor.api.engine_gateway")

LINGER_TIMEOUT = 10.0  # seconds to drain a request body the engine did not read
HALF_CLOSE_GRACE = 2.0  # seconds a client may keep writing after the engine closed
WATCH_AFTER = 0.05  # seconds after which an answer in progress watches for the client leaving
REPORT_AFTER = 1.0  # seconds of streaming after which finished() is called, not at the end
POOL_IDLE_MAX = 4  # idle upstream connections kept per route
POOL_IDLE_AGE = 30.0  # seconds an idle upstream connection is kept
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size can be resent on a fresh connection
HEADER_LIMIT = 256 * 1024  # X-Registry-Config can be large

# Response headers that concern only the engine's connection, never passed on.
_DROP_RESPONSE = {b"connection", b"keep-alive", b"proxy-connection"}


# ---------------------------------------------------------------------------------------
# Failures inside one exchange.


class ClientGone(Exception):
    """The client closed or broke its connection; nothing more can be said to it."""


class UpstreamFailed(Exception):
    def __init__(self, message: str, *, status: int = 502, replayable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.replayable = replayable  # nothing of the response came: safe to try again


Event: TypeAlias = "h11.Event | type[h11.PAUSED]"
_T = TypeVar("_T")


class Reporter:
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


class Report:
    """Calls one admission's `finished(status)` once, through the reporter thread.

    The status is known at the response head. It is reported once the answer has been
    passed on, so that the reporter does not compete with relaying it, or after
    REPORT_AFTER seconds of a stream that goes on (`logs -f`), whichever comes first.
    """

    def __init__(self, reporter: Reporter, finished: Callable[[int], None]) -> None:
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


async def client_event(conn: h11.Connection, client: ByteStream) -> Event:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        try:
            data = await client.read()
        except (OSError, ssl.SSLError) as exc:
            raise ClientGone(str(exc)) from exc
        conn.receive_data(data)


class RequestBody:
    """The client's request body, read once, with its first bytes kept for a replay.

    `kept` holds the data handed out so far while it stays under REPLAY_LIMIT; `end` is
    set once the end of the body has been handed out.
    """

    def __init__(self, conn: h11.Connection, client: ByteStream, method: bytes) -> None:
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
            event: Event = self._ahead.pop(0)
        else:
            event = await client_event(self._conn, self._client)
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
        raise ClientGone("the client closed the connection in the middle of its request")

    async def discard(self, timeout: float) -> bool:
        """Read and drop the rest of the body; True if it ended in time."""
        try:
            async with asyncio.timeout(timeout):
                while self.end is None:
                    self.replayable = False
                    await self.next()
        except (TimeoutError, ClientGone, h11.RemoteProtocolError):
            return False
        return True


def quiet(task: asyncio.Task[_T]) -> asyncio.Task[_T]:
    """Mark a task's failure as seen even if nobody awaits it (at shutdown)."""
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def settle(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task if it still runs, and collect its outcome whatever it was."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def json_error(status: int, message: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"message": message}).encode()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    return headers, body


def header(request: h11.Request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """The header names listed in Connection: hop-by-hop, never forwarded."""
    return {t.strip().lower() for k, v in headers if k == b"connection" for t in v.split(b",")}


def wants_upgrade(request: h11.Request) -> bool:
    tokens = connection_tokens(request.headers)
    return b"upgrade" in tokens and any(k == b"upgrade" for k, _ in request.headers)


# ---------------------------------------------------------------------------------------
# The pool of idle upstream connections.


class Pool:
    """Idle upstream connections per route, reused only after a complete, non-upgraded
    exchange that both sides allow to keep alive."""

    def __init__(self) -> None:
        self._idle: dict[Hashable, list[tuple[float, ByteStream]]] = {}

    async def take(self, route: Hashable) -> ByteStream | None:
        """An idle connection to `route` that is still usable, if there is one."""
        idle = self._idle.get(route)
        now = time.monotonic()
        while idle:
            since, stream = idle.pop()
            if now - since < POOL_IDLE_AGE and not await stream.poll():
                return stream
            stream.close()
        return None

    def give(self, route: Hashable, stream: ByteStream) -> None:
        """Keep a connection after a complete exchange (the oldest go first)."""
        idle = self._idle.setdefault(route, [])
        now = time.monotonic()
        for since, old in [e for e in idle if now - e[0] >= POOL_IDLE_AGE]:
            idle.remove((since, old))
            old.close()
        if len(idle) >= POOL_IDLE_MAX or stream.closing:
            stream.close()
        else:
            idle.append((now, stream))

    def close(self) -> None:
        for idle in self._idle.values():
            for _, stream in idle:
                stream.close()
        self._idle.clear()


# ---------------------------------------------------------------------------------------


class Relay:
    """Moves one exchange's bytes; keeps completed upstream connections in `pool`."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def relay(
        self,
        conn: h11.Connection,
        client: ByteStream,
        outgoing: h11.Request,
        body: RequestBody,
        upstream: ByteStream,
        route: Hashable,
        report: Report,
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
            raise UpstreamFailed(f"lost the engine: {exc}", replayable=True) from exc

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
            self.pool.give(route, upstream)
        else:
            upstream.close()
        return True

    async def _relay_watching_client(
        self,
        conn: h11.Connection,
        client: ByteStream,
        uconn: h11.Connection,
        upstream: ByteStream,
        report: Report,
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
            watcher = quiet(asyncio.create_task(watch()))

        timer = asyncio.get_running_loop().call_later(WATCH_AFTER, start_watching)

        async def stop_watching() -> None:
            timer.cancel()
            await settle(watcher)

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
                raise ClientGone("the client left before the answer was complete") from None
            raise

    async def _relay_streaming_body(
        self,
        conn: h11.Connection,
        client: ByteStream,
        uconn: h11.Connection,
        upstream: ByteStream,
        body: RequestBody,
        report: Report,
    ) -> str:
        """Send the rest of a large body while the answer is relayed (it may come early)."""
        pump = quiet(asyncio.create_task(self._pump_body(body, uconn, upstream)))

        async def body_sent() -> None:
            await pump  # the body is sent before the engine hijacks

        response = quiet(
            asyncio.create_task(
                self._relay_response(conn, client, uconn, upstream, body_sent, report)
            )
        )
        try:
            done, _ = await asyncio.wait({pump, response}, return_when=asyncio.FIRST_EXCEPTION)
            if pump in done and not pump.cancelled():
                failure = pump.exception()
                if isinstance(failure, ClientGone | h11.RemoteProtocolError):
                    raise failure
                # Else the engine stopped reading the body; its answer may still come.
            return await response
        finally:
            await settle(response)
            await settle(pump)

    async def _pump_body(
        self, body: RequestBody, uconn: h11.Connection, upstream: ByteStream
    ) -> None:
        """Forward the rest of the request body to the engine as it arrives."""
        while body.end is None:
            event = await body.next()
            try:
                upstream.write(uconn.send(event) or b"")
                await upstream.drain()
            except (OSError, ssl.SSLError, h11.LocalProtocolError) as exc:
                raise UpstreamFailed(
                    f"lost the engine while sending the request: {exc}", replayable=True
                ) from exc

    async def _relay_response(
        self,
        conn: h11.Connection,
        client: ByteStream,
        uconn: h11.Connection,
        upstream: ByteStream,
        before_splice: Callable[[], Awaitable[None]],
        report: Report,
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
                raise UpstreamFailed(f"the engine broke the protocol: {exc}") from exc
            if event is h11.NEED_DATA:
                await self._flush_client(client, out)
                try:
                    data = await upstream.read()
                except (OSError, ssl.SSLError) as exc:
                    failure = f"lost the engine: {exc}"
                    raise UpstreamFailed(failure, replayable=not started) from exc
                if not data and not started:
                    raise UpstreamFailed("the engine closed the connection", replayable=True)
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
                drop = _DROP_RESPONSE | connection_tokens(event.headers)
                headers = [(k, v) for k, v in event.headers.raw_items() if k.lower() not in drop]
                reply = h11.Response(
                    status_code=event.status_code, headers=headers, reason=event.reason
                )
                out += conn.send(reply) or b""
            elif isinstance(event, h11.Data):
                out += conn.send(event) or b""
                if len(out) >= CHUNK:
                    await self._flush_client(client, out)
            elif isinstance(event, h11.EndOfMessage):
                out += conn.send(h11.EndOfMessage()) or b""
                await self._flush_client(client, out)
                report.now()
                return "complete"
            elif not started:  # ConnectionClosed before any answer
                raise UpstreamFailed("the engine closed the connection", replayable=True)
            else:
                raise UpstreamFailed("the engine closed the connection mid-response")

    async def _flush_client(self, client: ByteStream, out: bytearray) -> None:
        if not out:
            return
        try:
            client.write(bytes(out))
            out.clear()
            await client.drain()
        except OSError as exc:
            raise ClientGone(str(exc)) from exc

    async def _splice(
        self,
        conn: h11.Connection,
        client: ByteStream,
        uconn: h11.Connection,
        upstream: ByteStream,
        switch: h11.InformationalResponse,
    ) -> None:
        """Pass the 101 on and copy raw bytes both ways until both directions end."""
        try:
            client.write(conn.send(switch) or b"")
        except h11.LocalProtocolError as exc:  # the client did not ask for an upgrade
            raise UpstreamFailed(f"the engine switched protocols unasked: {exc}") from exc
        from_client, client_done = conn.trailing_data
        from_engine, _ = uconn.trailing_data
        client.write(from_engine)
        upstream.write(from_client)
        if client_done:
            upstream.write_eof()

        async def copy(source: ByteStream, sink: ByteStream) -> None:
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
            await settle(outbound)
            await settle(inbound)
            upstream.close()
