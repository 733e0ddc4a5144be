"""Asynchronous calls to a VM's engine, for whatever waits on it: a followed log, an
interactive exec. They hold no thread while they wait.

The rule they keep: a caller that waits on the engine (a quiet `logs?follow`, an exec
waiting for input) holds a connection and a few buffers, never a worker thread, and
`close()` releases the connection at once, from the event loop, whether a read is
waiting or not. Each call opens its own connection (mutual TLS, the engine's name
checked as the blocking client does) and closes it when done: a long stream gains
nothing from a pool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import h11

from dockvisor.engines.calls import API_VERSION, Since, c, exec_body, logs_query
from dockvisor.engines.connections import ByteStream, open_byte_stream
from dockvisor.engines.errors import EngineError, EngineUnavailable, error_for, unavailable
from dockvisor.engines.streams import Frame, LogFollow

__all__ = ["AsyncEngine", "AsyncExecSocket", "AsyncLogStream"]

_HEAD_LIMIT = 256 * 1024


class _Exchange:
    """One HTTP/1.1 request on its own connection, its answer read as it comes."""

    def __init__(self, stream: ByteStream, conn: h11.Connection, doing: str) -> None:
        self.stream = stream
        self.conn = conn
        self.doing = doing
        self.status = 0
        self.headers: dict[str, str] = {}

    async def _event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise EngineError(f"{self.doing}: the engine broke the protocol: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.read()
            except OSError as exc:
                raise EngineUnavailable(f"{self.doing}: lost the engine ({exc})") from exc
            self.conn.receive_data(data)

    async def head(self) -> h11.Response | h11.InformationalResponse:
        """The answer's status line and headers (101 for a hijacked connection)."""
        while True:
            event = await self._event()
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue
            if isinstance(event, h11.Response | h11.InformationalResponse):
                self.status = event.status_code
                self.headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers
                }
                return event
            raise EngineUnavailable(f"{self.doing}: the engine closed the connection")

    async def chunk(self) -> bytes | None:
        """The next piece of the body; None at its end."""
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
                continue
            if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return None
            raise EngineError(f"{self.doing}: unexpected {type(event).__name__} from the engine")

    async def body(self) -> bytes:
        data = bytearray()
        while (piece := await self.chunk()) is not None:
            data += piece
        return bytes(data)

    async def raise_for_status(self) -> None:
        """The engine's error as a dockvisor error (the connection closed)."""
        if 200 <= self.status < 300 or self.status in (101, 304):
            return
        try:
            raw = await self.body()
        finally:
            self.stream.close()
        try:
            message = str(json.loads(raw).get("message", raw.decode(errors="replace")))
        except (ValueError, AttributeError):
            message = raw.decode(errors="replace")
        raise error_for(self.status, message or f"HTTP {self.status}", self.doing)


class AsyncEngine:
    """The asynchronous calls of one engine (see the module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: Any,
        server_name: str,
        *,
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl_context = ssl_context
        self._server_name = server_name
        self._timeout = timeout
        shown = f"[{host}]" if ":" in host else host
        self._where = f"{'https' if ssl_context else 'tcp'}://{shown}:{port}"
        self._host_header = f"{shown}:{port}"

    async def _open(
        self,
        method: str,
        path: str,
        doing: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        upgrade: bool = False,
    ) -> _Exchange:
        target = f"/{API_VERSION}{path}" + (f"?{urlencode(params)}" if params else "")
        try:
            stream = await open_byte_stream(
                self.host,
                self.port,
                self._ssl_context,
                self._server_name,
                timeout=self._timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise unavailable(exc, doing, self._where, self._server_name) from exc
        headers = [("Host", self._host_header), ("User-Agent", "dockvisor")]
        payload = b""
        if body is not None:
            payload = json.dumps(body).encode()
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        if upgrade:
            headers += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
        else:
            headers.append(("Connection", "close"))
        conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_LIMIT)
        data = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        if payload:
            data += conn.send(h11.Data(data=payload)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        try:
            stream.write(data)
            await stream.drain()
        except OSError as exc:
            stream.close()
            raise unavailable(exc, doing, self._where, self._server_name) from exc
        return _Exchange(stream, conn, doing)

    async def call(
        self,
        method: str,
        path: str,
        doing: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """One call; its JSON answer (None for an empty one)."""
        exchange = await self._open(method, path, doing, params=params, body=body)
        try:
            await exchange.head()
            await exchange.raise_for_status()
            raw = await exchange.body()
        finally:
            exchange.stream.close()
        return json.loads(raw) if raw.strip() else None

    # -- logs ----------------------------------------------------------------------

    async def follow_logs(
        self,
        container: str,
        *,
        stdout: bool = True,
        stderr: bool = True,
        tail: int | None = None,
        timestamps: bool = False,
        since: Since = None,
    ) -> AsyncLogStream:
        """("stdout" | "stderr", bytes) as the container writes them, until it stops
        (its last bytes included: LogFollow) or the stream is closed."""
        doing = f"following logs of {container}"
        info = await self.call("GET", f"/containers/{c(container)}/json", doing)
        params = logs_query(
            stdout=stdout, stderr=stderr, tail=tail, timestamps=timestamps, since=since,
            follow=True,
        )  # fmt: skip
        follow = LogFollow(
            tty=bool((info.get("Config") or {}).get("Tty")), timestamps=timestamps, params=params
        )
        path = f"/containers/{c(container)}/logs"
        exchange = await self._open("GET", path, doing, params=follow.params)
        try:
            await exchange.head()
            await exchange.raise_for_status()
        except BaseException:
            exchange.stream.close()
            raise
        return AsyncLogStream(self, path, exchange, follow)

    # -- exec ----------------------------------------------------------------------

    async def exec_socket(
        self,
        container: str,
        command: Sequence[str],
        *,
        tty: bool = True,
        stdin: bool = True,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> AsyncExecSocket:
        """Start an interactive command in a running container; its hijacked connection."""
        body = exec_body(command, stdin=stdin, tty=tty, env=env, workdir=workdir, user=user)
        created = await self.call(
            "POST",
            f"/containers/{c(container)}/exec",
            f"starting {command[0]} in container {container}",
            body=body,
        )
        exec_id = str(created["Id"])
        doing = f"attaching to {command[0]} in container {container}"
        exchange = await self._open(
            "POST", f"/exec/{exec_id}/start", doing, body={"Detach": False, "Tty": tty},
            upgrade=True,
        )  # fmt: skip
        try:
            await exchange.head()
            await exchange.raise_for_status()
        except BaseException:
            exchange.stream.close()
            raise
        pending, _ = exchange.conn.trailing_data
        if exchange.status == 200:  # answered without an upgrade: the output is the body
            return AsyncExecSocket(self, exec_id, exchange.stream, bytes(pending), exchange)
        return AsyncExecSocket(self, exec_id, exchange.stream, bytes(pending), None)

    async def exec_resize(self, exec_id: str, height: int, width: int) -> None:
        await self.call(
            "POST",
            f"/exec/{exec_id}/resize",
            f"resizing exec {exec_id}",
            params={"h": str(height), "w": str(width)},
        )

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        return dict(await self.call("GET", f"/exec/{exec_id}/json", f"inspecting exec {exec_id}"))


class AsyncLogStream:
    """A followed log: `async for kind, data in stream`. `close()` (sync, from the event
    loop, at any time) releases the engine connection at once."""

    def __init__(
        self, engine: AsyncEngine, path: str, exchange: _Exchange, follow: LogFollow
    ) -> None:
        self._engine = engine
        self._path = path
        self._exchange = exchange
        self._follow = follow
        self._ready: list[Frame] = []
        self._catching_up = False
        self._closed = False

    def __aiter__(self) -> AsyncLogStream:
        return self

    async def __anext__(self) -> Frame:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            try:
                chunk = await self._exchange.chunk()
            except (EngineError, OSError):
                if self._closed:  # closed while reading: the end
                    raise StopAsyncIteration from None
                raise
            if chunk is None:
                self._exchange.stream.close()
                if not await self._next_part():
                    self._closed = True
                    raise StopAsyncIteration
                continue
            feed = self._follow.catch_up if self._catching_up else self._follow.feed
            self._ready = feed(chunk)
        return self._ready.pop(0)

    async def _next_part(self) -> bool:
        """The follow ended by itself: start the read that completes it (LogFollow)."""
        if self._catching_up or self._closed:
            return False
        self._catching_up = True
        params = self._follow.catch_up_params()
        if params is None:
            return False
        exchange = await self._engine._open("GET", self._path, self._exchange.doing, params=params)
        self._exchange = exchange
        if self._closed:
            exchange.stream.close()
            return False
        await exchange.head()
        if exchange.status == 404:  # removed in the meantime: nothing more to read
            exchange.stream.close()
            return False
        await exchange.raise_for_status()
        return True

    def close(self) -> None:
        """End the stream and release its connection now (repeatable)."""
        self._closed = True
        self._exchange.stream.close()

    async def __aenter__(self) -> AsyncLogStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class AsyncExecSocket:
    """An interactive exec's hijacked connection: `recv`, `sendall`, `close_write` (the
    end of stdin: a TCP half-close, or a TLS close_notify, engines/tls.py), `close`.
    Without a TTY the output is multiplexed (engines/streams.py: FrameReader)."""

    def __init__(
        self,
        engine: AsyncEngine,
        exec_id: str,
        stream: ByteStream,
        pending: bytes,
        body: _Exchange | None,
    ) -> None:
        self._engine = engine
        self.exec_id = exec_id
        self._stream = stream
        self._pending = pending
        self._body = body  # an engine that answered 200 instead of 101

    async def recv(self) -> bytes:
        """Some output; b"" once the exec has ended."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        if self._body is not None:
            return (await self._body.chunk()) or b""
        return await self._stream.read()

    async def sendall(self, data: bytes) -> None:
        self._stream.write(data)
        await self._stream.drain()

    def close_write(self) -> None:
        self._stream.write_eof()

    def close(self) -> None:
        self._stream.close()

    async def resize(self, rows: int, cols: int) -> None:
        await self._engine.exec_resize(self.exec_id, rows, cols)

    async def exit_code(self, wait: float = 5.0) -> int | None:
        """Its exit code once it has ended (the engine may take a moment to record it
        after the output ends); None if the engine does not say within `wait` seconds."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                state = await self._engine.exec_inspect(self.exec_id)
            except (EngineError, OSError):
                return None
            code = state.get("ExitCode")
            if not state.get("Running") and code is not None:
                return int(code)
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.05)
