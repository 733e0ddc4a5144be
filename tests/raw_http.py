"""Raw HTTP for tests that must send exactly the bytes they mean (smuggling, framing):
send them on one connection and read each answer with h11."""

from __future__ import annotations

import socket

import h11

__all__ = ["answers"]


def answers(
    address: tuple[str, int], raw: bytes, methods: list[str], *, timeout: float = 5
) -> list[tuple[int, bytes]]:
    """Send `raw` (one or more requests) on one connection; (status, body) of the answer
    to each, whose methods are `methods` (for h11 to read a HEAD answer right). An
    answer cut short by the server closing the connection ends the list."""
    found = []
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        conn = h11.Connection(h11.CLIENT)
        for method in methods:
            # Tell h11 what was asked (its own bytes are not sent: `raw` was).
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    found.append((status, bytes(body)))
                    return found
                else:
                    raise AssertionError(f"unexpected {event!r}")
            found.append((status, bytes(body)))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return found
            conn.start_next_cycle()
    return found
