"""Engine output as it streams: Docker's multiplexed framing, JSON lines, a blocking
`EngineStream`, and `LogFollow`, the rule that a followed log loses nothing at its end.

Without a TTY, attach, logs and exec output is multiplexed: frames of an 8-byte header
(stream 1 stdout or 2 stderr, 3 zero bytes, a 4-byte big-endian length) and the payload.
With a TTY it is the terminal's bytes as they are.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import httpx

__all__ = [
    "EngineStream",
    "FrameReader",
    "LogFollow",
    "demultiplex",
    "frames",
    "json_objects",
    "raw_frames",
]

T = TypeVar("T")
Frame = tuple[str, bytes]  # ("stdout" | "stderr", bytes)


class FrameReader:
    """Docker's multiplexed stream, read incrementally: `feed` gives every frame that
    is whole so far; a frame cut between two chunks waits for the next."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        self._buffer += chunk
        out: list[Frame] = []
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                break
            kind = "stderr" if self._buffer[0] == 2 else "stdout"
            payload = bytes(self._buffer[8 : 8 + size])
            del self._buffer[: 8 + size]
            if payload:
                out.append((kind, payload))
        return out

    @property
    def pending(self) -> int:
        """Bytes of a frame not yet whole."""
        return len(self._buffer)


def demultiplex(raw: bytes) -> tuple[bytes, bytes]:
    """Split a non-TTY attach/logs/exec stream into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    for kind, chunk in FrameReader().feed(raw):
        (err if kind == "stderr" else out).extend(chunk)
    return bytes(out), bytes(err)


def frames(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """The (stream, bytes) frames of a multiplexed stream, as soon as each is whole."""
    reader = FrameReader()
    for chunk in chunks:
        yield from reader.feed(chunk)


def raw_frames(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """A TTY stream is not multiplexed: everything is stdout."""
    for chunk in chunks:
        if chunk:
            yield "stdout", chunk


def json_objects(chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
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


# -- following a log without losing its end ---------------------------------------------

# dockerd's RFC3339NanoFixed, with the space it puts after it.
_STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{9})(Z|[+-]\d\d:\d\d) ")


def _instant(stamp: bytes) -> tuple[int, int]:
    """A log timestamp as (Unix seconds, nanoseconds)."""
    found = _STAMP.match(stamp)
    if not found:
        raise ValueError(f"not a log timestamp: {stamp[:40]!r}")
    seconds = calendar.timegm(time.strptime(found[1].decode(), "%Y-%m-%dT%H:%M:%S"))
    zone = found[3].decode()
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds, int(found[2])


def _nanos(stamp: bytes) -> int:
    seconds, nanos = _instant(stamp)
    return seconds * 1_000_000_000 + nanos


class LogFollow:
    """What `GET /containers/{id}/logs?follow=1` misses, and how to get it back.

    The rule: a followed log hands out everything the container wrote, its last bytes
    included, each once. dockerd 20.10 breaks it: its log copier writes a final line that
    has no newline when the container's output ends, at the moment the container stops,
    and a follower then stops without reading it (measured: `sh -c 'printf abc; sleep
    0.3'` followed from its start lost "abc" 9 times in 12). A follow that ends by itself
    (the container stopped) is therefore completed by one more read without `follow`.

    Without a TTY each message is one frame, so the follow asks for timestamps whatever
    the caller wants (`params` says so). A follow does not hand out stdout and stderr in
    the order of their stamps (each has its own copier: a stderr line stamped after a
    stdout line may come first), so the catch-up reads from WINDOW before the newest
    stamp handed out and skips every message already handed out (the same stream, stamp
    and bytes, as many times as it was). The caller's stamps are removed unless it asked
    for them. A TTY stream has no frames to find a message in: its catch-up reads the
    log again as the follow did and skips the bytes already handed out (with `tail`,
    where the start of a second read moves, there is nothing to compare and no
    catch-up).

    Sans I/O: `feed` the follow's bytes, then `catch_up_params()` and `catch_up` the
    answer of that read.
    """

    WINDOW = 2_000_000_000  # ns: how far apart in stamps the two copiers may hand out

    def __init__(self, *, tty: bool, timestamps: bool, params: dict[str, str]) -> None:
        self.tty = tty
        self._keep_stamps = timestamps
        self._caller = dict(params)  # the caller's query (follow included)
        self.params = dict(params)  # what the follow itself asks for
        if not tty:
            self.params["timestamps"] = "1"
        self._reader = FrameReader()
        self._newest: int | None = None  # the newest stamp handed out (ns)
        # Messages handed out within WINDOW of the newest, by (stream, stamp, digest),
        # in the order given (to forget the old ones from the left).
        self._seen: Counter[tuple[str, int, bytes]] = Counter()
        self._order: deque[tuple[str, int, bytes]] = deque()
        self._from: int | None = None  # catch-up: messages stamped before this are old
        self._given = 0  # TTY: bytes handed out
        self._skipped = 0  # catch-up, TTY: bytes skipped

    def _message(self, kind: str, payload: bytes) -> Frame:
        found = _STAMP.match(payload)
        if found is None:  # not stamped: give it whole
            return kind, payload
        stamp = _nanos(found[0])
        key = (kind, stamp, hashlib.blake2b(payload, digest_size=8).digest())
        self._seen[key] += 1
        self._order.append(key)
        if self._newest is None or stamp > self._newest:
            self._newest = stamp
        while self._order and self._order[0][1] < self._newest - self.WINDOW:
            old = self._order.popleft()
            self._seen[old] -= 1
            if self._seen[old] <= 0:
                del self._seen[old]
        return kind, (payload if self._keep_stamps else payload[found.end() :])

    def feed(self, chunk: bytes) -> list[Frame]:
        """The messages in the next bytes of the follow, as the caller wants them."""
        if self.tty:
            self._given += len(chunk)
            return [("stdout", chunk)] if chunk else []
        return [self._message(kind, data) for kind, data in self._reader.feed(chunk)]

    def catch_up_params(self) -> dict[str, str] | None:
        """The query of the read that completes an ended follow; None if none can.
        Call it once the follow has ended by itself, then feed that read's bytes to
        `catch_up`."""
        query = {k: v for k, v in self._caller.items() if k != "follow"}
        self._reader = FrameReader()
        self._skipped = 0
        if self.tty:
            return None if query.get("tail", "all") != "all" else query
        query["timestamps"] = "1"
        if self._newest is not None:
            self._from = max(0, self._newest - self.WINDOW)
            query["since"] = f"{self._from // 1_000_000_000}.{self._from % 1_000_000_000:09d}"
            query["tail"] = "all"
        return query

    def catch_up(self, chunk: bytes) -> list[Frame]:
        """What the next bytes of that read hold that the follow did not hand out."""
        if self.tty:
            behind = self._given - self._skipped
            self._skipped += min(behind, len(chunk))
            rest = chunk[behind:] if behind > 0 else chunk
            self._given += len(rest)
            return [("stdout", rest)] if rest else []
        out: list[Frame] = []
        for kind, payload in self._reader.feed(chunk):
            found = _STAMP.match(payload)
            if found is not None and self._from is not None:
                stamp = _nanos(found[0])
                if stamp < self._from:
                    continue  # before the window (since is inclusive, and coarse)
                key = (kind, stamp, hashlib.blake2b(payload, digest_size=8).digest())
                if self._seen.get(key, 0) > 0:
                    self._seen[key] -= 1  # handed out by the follow already
                    continue
            out.append(self._message(kind, payload))
        return out


# -- a blocking stream -------------------------------------------------------------------


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
        unavailable: Callable[[Exception], Exception],
        broken: Callable[[Exception], Exception],
    ) -> None:
        self._response = response
        self._items = parse(response.iter_raw())
        self._unavailable = unavailable
        self._broken = broken
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
            raise self._broken(exc) from exc
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
