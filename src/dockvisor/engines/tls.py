"""TLS with half-close, without I/O: one core for every hijacked engine connection.

The Docker CLI ends a hijacked stream's input with a TLS close_notify and keeps reading
the output (Go's tls.Conn.CloseWrite); dockerd takes it as the end of stdin. Python's
SSLSocket and asyncio's TLS transport cannot do that; an `ssl.SSLObject` over memory BIOs
can. `TlsSession` is that object with the rules written once, and the callers only move
bytes: the engine client's blocking exec socket (engines/exec_socket.py), the asyncio
byte streams of the engine gateway and of the asynchronous engine calls
(engines/connections.py).

Rules it keeps:
- the certificate and its name are checked as the context says (CERT_REQUIRED and
  check_hostname, as with wrap_socket), against `server_hostname`, never the address;
- `close_write()` puts our close_notify on the wire and keeps every byte of plaintext
  the peer had already sent: unwrap() goes on to read incoming records, so they are
  decrypted first and handed out by `read()` before anything newer;
- the end of the peer's output is its close_notify, or the end of the TCP stream.
"""

from __future__ import annotations

import ssl

__all__ = ["TlsSession"]

_CHUNK = 64 * 1024


class TlsSession:
    """One TLS client connection's state. Feed it the network's bytes with `receive`,
    send what `outgoing()` returns, and read and write plaintext.

    Not thread-safe: a caller that reads in one thread and writes in another holds its
    own lock around every call (engines/exec_socket.py does).
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=server_hostname
        )
        self._held = bytearray()  # plaintext decrypted ahead of a half-close
        self._write_closed = False
        self._read_closed = False

    # -- the network side ----------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the network; b"" when the TCP stream has ended."""
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def outgoing(self) -> bytes:
        """What TLS has to say (records, alerts): send it, in this order."""
        return self._outgoing.read()

    @property
    def outgoing_pending(self) -> int:
        """Bytes waiting in `outgoing()`."""
        return self._outgoing.pending

    @property
    def network_ended(self) -> bool:
        """True once `receive(b"")` was called."""
        return self._incoming.eof

    # -- the handshake -------------------------------------------------------------

    def handshake(self) -> bool:
        """One step of the handshake: True when it is done, False when it needs more
        bytes from the network (send `outgoing()` first). ssl.SSLError if the peer is
        not the one expected; ConnectionResetError if the network ended first."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                raise ConnectionResetError("closed during the TLS handshake") from None
            return False
        return True

    # -- plaintext -----------------------------------------------------------------

    def read(self, size: int = _CHUNK) -> bytes | None:
        """Up to `size` bytes of plaintext; b"" at the end of the peer's output; None
        when more bytes from the network are needed (then `receive` them)."""
        if self._held:
            data = bytes(self._held[:size])
            del self._held[:size]
            return data
        if self._read_closed:
            return b""
        try:
            data = self._tls.read(size)
        except ssl.SSLWantReadError:
            if self._incoming.eof:
                self._read_closed = True
                return b""
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._read_closed = True
            return b""
        if not data:
            self._read_closed = True
        return data

    @property
    def buffered(self) -> bool:
        """True when plaintext can be read without more network bytes."""
        return bool(self._held) or self._tls.pending() > 0

    def write(self, data: bytes) -> None:
        """Encrypt `data` (then send `outgoing()`); BrokenPipeError after close_write."""
        if self._write_closed:
            raise BrokenPipeError("the writing side is already closed")
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            self._tls.write(view[start : start + _CHUNK])

    @property
    def write_closed(self) -> bool:
        return self._write_closed

    def close_write(self) -> None:
        """Our close_notify (then send `outgoing()`): the peer reads the end of our
        output and may go on sending; its plaintext is kept for `read`. Repeatable."""
        if self._write_closed:
            return
        self._write_closed = True
        while True:
            try:
                data = self._tls.read(_CHUNK)
            except ssl.SSLError:
                break
            if not data:
                break
            self._held += data
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is out; the peer's close_notify comes after its output
        except ssl.SSLError:
            pass  # the peer has already ended its side
