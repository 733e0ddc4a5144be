"""TLS half-close on an in-memory TLS object (ssl.SSLObject over MemoryBIOs).

The Docker CLI ends a hijacked stream's input with a TLS close_notify and keeps reading
the output (Go's tls.Conn.CloseWrite); dockerd takes it as the end of stdin. Python's
SSLSocket cannot do that, an SSLObject can: both the engine client's exec connection and
the engine gateway use this.
"""

from __future__ import annotations

import ssl

__all__ = ["send_close_notify"]

_CHUNK = 64 * 1024


def send_close_notify(tls: ssl.SSLObject) -> bytes:
    """Put our close_notify in `tls`'s outgoing BIO (the caller sends it) and return the
    plaintext the peer had already sent: unwrap() goes on to read incoming records, so
    they are decrypted first, and none of the peer's output is lost."""
    plain = bytearray()
    while True:
        try:
            data = tls.read(_CHUNK)
        except ssl.SSLError:
            break
        if not data:
            break
        plain += data
    try:
        tls.unwrap()
    except ssl.SSLWantReadError:
        pass  # ours is out; the peer's close_notify comes after its output
    except ssl.SSLError:
        pass  # the peer has already ended its side
    return bytes(plain)
