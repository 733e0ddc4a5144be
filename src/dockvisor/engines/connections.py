"""Asynchronous byte streams to a Docker engine (or from a client): plain TCP, or TLS
run by the sans-I/O core in engines/tls.py, with a half-close both ways.

asyncio's own TLS transport cannot send close_notify and keep reading, which a hijacked
exec needs (see engines/tls.py); these streams can. The engine gateway uses them on both
sides, and the asynchronous engine calls (engines/async_engine.py) to reach an engine.

No private attribute of asyncio is read: whether an idle connection was closed by the
peer (or has sent something unasked) is learnt by `poll()`, which gives the reader one
turn of the event loop to deliver what has already arrived.
"""

from __future__ import annotations

import asyncio
import ssl

from dockvisor.engines.tls import TlsSession

__all__ = ["ByteStream", "TlsByteStream", "open_byte_stream"]

CHUNK = 64 * 1024


class ByteStream:
    """Bytes both ways over an asyncio connection; `write_eof` half-closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._early = bytearray()  # bytes `poll` found before anyone asked for them

    async def _receive(self) -> bytes:
        if self._early:
            data = bytes(self._early)
            self._early.clear()
            return data
        return await self._reader.read(CHUNK)

    async def read(self) -> bytes:
        """Some bytes, or b"" at the end of the stream."""
        return await self._receive()

    def write(self, data: bytes) -> None:
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def write_eof(self) -> None:
        """Stop writing and keep reading."""
        if self._writer.can_write_eof() and not self._writer.is_closing():
            self._writer.write_eof()

    def close(self) -> None:
        """Close the connection now (safe to repeat; never waits)."""
        self._writer.close()

    @property
    def closing(self) -> bool:
        return self._writer.is_closing()

    async def poll(self) -> bool:
        """True when an idle connection is unusable: the peer has closed it or sent
        something nobody asked for (an engine that closes an idle connection says so
        with a TLS close_notify, or a FIN). Waits for nothing that has not arrived."""
        if self._writer.is_closing() or self._early:
            return True
        if self._reader.at_eof():
            return True
        try:
            async with asyncio.timeout(0):
                data = await self._reader.read(CHUNK)
        except TimeoutError:
            return False
        if data:
            self._early += data
        return True


class TlsByteStream(ByteStream):
    """TLS over a ByteStream's connection, run in memory (engines/tls.py)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        server_hostname: str | None,
    ) -> None:
        super().__init__(reader, writer)
        self._tls = TlsSession(context, server_hostname)

    def _flush(self) -> None:
        data = self._tls.outgoing()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _fill(self) -> None:
        self._flush()
        self._tls.receive(await self._receive())

    async def handshake(self) -> None:
        """The TLS handshake, certificate and name checked (ssl.SSLError if not)."""
        while not self._tls.handshake():
            await self._fill()
        self._flush()

    async def read(self) -> bytes:
        while True:
            data = self._tls.read(CHUNK)
            if data is not None:
                self._flush()  # e.g. a TLS 1.3 key update's answer
                return data
            await self._fill()

    def write(self, data: bytes) -> None:
        if data and not self._writer.is_closing() and not self._tls.write_closed:
            self._tls.write(data)
            self._flush()

    def write_eof(self) -> None:
        if self._writer.is_closing():
            return
        self._tls.close_write()
        self._flush()

    async def poll(self) -> bool:
        if self._tls.buffered or self._tls.network_ended:
            return True
        return await super().poll()


async def open_byte_stream(
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    server_hostname: str | None,
    *,
    timeout: float,
) -> ByteStream:
    """A connection to host:port, TLS set up when `context` is given (the peer's
    certificate checked against `server_hostname`). TimeoutError after `timeout`
    seconds; OSError or ssl.SSLError when it cannot be made."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=CHUNK)
        if context is None:
            return ByteStream(reader, writer)
        stream = TlsByteStream(reader, writer, context, server_hostname)
        try:
            await stream.handshake()
        except BaseException:
            writer.close()
            raise
        return stream
