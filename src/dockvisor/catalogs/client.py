"""Read a template catalog over HTTP(S): its signed index, and its files, resumably.

Nothing from a catalog is used before it is checked: the index and the products file
against their signatures and the catalog's key, each downloaded file against the size
and SHA-256 that the signed products file gives.

HTTP is spoken with the standard library's http.client rather than httpx, for speed:
httpx hands a body over in 64 KiB pieces through h11, 1.45 s per GiB on localhost before
any hashing where curl takes 0.6 s; http.client's readinto() fills 256 KiB buffers
directly from the socket, and the SHA-256 of each runs on a second thread while the
next one arrives (hashlib lets go of the GIL), so checking costs little time.
Redirects are not followed: a 3xx is an error that says where it points.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import io
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from dockvisor.domain import catalog
from dockvisor.domain.catalog import CatalogFile, CatalogTemplate
from dockvisor.errors import Cancelled, CatalogError, InvalidInput

__all__ = ["MAX_METADATA", "METADATA_DEADLINE", "MIN_RATE", "RATE_WINDOW", "CatalogClient"]

Progress = Callable[[str, float], None]

MAX_METADATA = 16 * 1024 * 1024  # the most an index, products or signature file may be
# A server that sends a byte now and then would hold a caller for ever (the socket's
# timeout counts only between bytes): a metadata file must come whole within this many
# seconds, and a download must keep up MIN_RATE over each RATE_WINDOW.
METADATA_DEADLINE = 30.0
MIN_RATE = 16 * 1024
RATE_WINDOW = 60.0
_BUFFER = 256 * 1024  # measured best: larger buffers fall out of the CPU cache
_BUFFERS = 8
_PROGRESS_EVERY = 0.1  # seconds
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Resumable(CatalogError):
    """The transfer stopped for a reason outside the bytes received: keep them."""


class CatalogClient:
    """One catalog: its name (for messages), its root URL and its publisher's key."""

    def __init__(
        self,
        name: str,
        url: str,
        public_key: str,
        *,
        timeout: float = 20.0,
        deadline: float = METADATA_DEADLINE,
        min_rate: int = MIN_RATE,
        rate_window: float = RATE_WINDOW,
    ) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or port == -1
            or parts.username is not None
            or parts.query
            or parts.fragment
        ):
            raise InvalidInput(
                f"catalog URL {url!r} is not valid: use http:// or https://, a host, "
                "optionally a port and a path, no credentials, query or fragment"
            )
        catalog.parse_public_key(public_key)
        self.name = name
        self.public_key = public_key
        self.timeout = timeout  # between two reads of the socket
        self.deadline = deadline  # for each index, products or signature file, in all
        self.min_rate = min_rate  # bytes per second a download keeps up over rate_window
        self.rate_window = rate_window
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._root = parts.path.rstrip("/") + "/"
        self.url = f"{parts.scheme}://{parts.netloc}{self._root}"

    def fetch(self) -> tuple[list[CatalogTemplate], datetime]:
        """The catalog's templates and when its index was updated (refuse a catalog
        that goes back in time), all checked against the key."""
        index = self._get_signed(catalog.INDEX_PATH)
        found = catalog.parse_index(self.name, index)
        products = self._get_signed(found.products_path)
        templates = catalog.parse_products(
            self.name, products, path=found.products_path, updated=found.updated
        )
        return templates, found.updated

    def download(
        self,
        file: CatalogFile,
        into: Path,
        *,
        progress: Progress | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Path:
        """Download `file` to `into/<sha256>`, checked against its signed size and
        SHA-256; at once if that file is already there and checks.

        The bytes arrive in `into/<sha256>.part`, which a later call resumes with a
        Range request (starting over if the server ignores it). The part is kept when
        the transfer stopped for a reason outside the bytes themselves (the server did
        not answer, answered an error status, or the connection was cut or timed out):
        the CatalogError then says to run the pull again to resume. It is removed when
        the bytes are wrong (more than the signed size, a wrong checksum), when writing
        them failed (a full disk: CatalogError saying so) or when `cancelled()` turned
        true (Cancelled). Progress is reported at most ten times a second."""
        final = into / file.sha256
        part = into / f"{file.sha256}.part"
        into.mkdir(parents=True, exist_ok=True)
        # One download at a time into `into` (from any process): a second one writing
        # the same part through its own descriptor could change what the first has
        # checked and returned. The second waits, then finds the file done.
        directory = os.open(into, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)  # the directory itself: no lock file
            return self._download_once(file, into, final, part, progress, cancelled)
        finally:
            os.close(directory)

    def _download_once(
        self,
        file: CatalogFile,
        into: Path,
        final: Path,
        part: Path,
        progress: Progress | None,
        cancelled: Callable[[], bool] | None,
    ) -> Path:
        try:
            if final.is_file():
                if _matches(final, file):
                    return final
                final.unlink()
            self._download(file, part, into, progress or _quiet, cancelled or _never)
            os.replace(part, final)
        except _Resumable:
            raise
        except OSError as e:
            _remove(part)
            raise self._write_error(e, file, into) from e
        except BaseException:
            _remove(part)
            raise
        return final

    def _download(
        self,
        file: CatalogFile,
        part: Path,
        into: Path,
        progress: Progress,
        cancelled: Callable[[], bool],
    ) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have >= file.size:
            if have == file.size and _matches(part, file):
                return
            part.unlink()
            have = 0
        watch = _Watchdog(deadline=None, min_rate=self.min_rate, window=self.rate_window)
        with watch:
            range_header = {"Range": f"bytes={have}-"} if have else {}
            connection, response = self._request(file.path, range_header, watch)
            try:
                start = self._start(response, file, have)
                with io.FileIO(part, "r+b" if start else "wb") as out, _Hasher() as hasher:
                    if start:
                        _hash_part(out, hasher, start)
                    self._receive(response, out, hasher, file, start, progress, cancelled,
                                  watch)  # fmt: skip
                    digest = hasher.hexdigest()
            finally:
                connection.close()
        if digest != file.sha256:
            raise CatalogError(
                f"catalog {self.name!r}: the checksum of {file.path} does not match the "
                f"catalog's (sha256 {digest}, signed {file.sha256}); the download was removed"
            )

    def _start(self, response: http.client.HTTPResponse, file: CatalogFile, have: int) -> int:
        """Where the body starts in the file: `have` for a range, 0 for the whole file."""
        url = self._url(file.path)
        start = 0
        if response.status == 206 and have:
            header = response.getheader("Content-Range") or ""
            match = _CONTENT_RANGE.fullmatch(header)
            if match is None or int(match[1]) != have or match[3] not in ("*", str(file.size)):
                raise CatalogError(
                    f"catalog {self.name!r}: {url} answered the range {header!r} to a request "
                    f"for bytes {have}- of {file.size}; the partial download was removed"
                )
            start = have
        elif response.status != 200:
            error = self._status_error(response, url)
            raise error if response.status == 416 else _Resumable(self._resume_hint(error, have))
        if response.length is not None and start + response.length != file.size:
            larger = "larger" if start + response.length > file.size else "smaller"
            raise CatalogError(
                f"catalog {self.name!r}: {url} is {larger} ({start + response.length} bytes) "
                f"than its signed size ({file.size}); the download was removed"
            )
        return start

    def _receive(
        self,
        response: http.client.HTTPResponse,
        out: io.FileIO,
        hasher: _Hasher,
        file: CatalogFile,
        start: int,
        progress: Progress,
        cancelled: Callable[[], bool],
        watch: _Watchdog,
    ) -> None:
        step = f"downloading {file.path}"
        done, next_report = start, 0.0
        while True:
            buffer = hasher.buffer()
            view = buffer[: min(_BUFFER, file.size - done + 1)]  # a byte more shows excess
            try:
                received = response.readinto(view)
            except (OSError, http.client.HTTPException) as e:
                raise self._cut_short(file, done, watch.reason or e) from None
            if not received:
                if watch.reason:
                    raise self._cut_short(file, done, watch.reason)
                break
            done += received
            watch.received += received
            if done > file.size:
                raise CatalogError(
                    f"catalog {self.name!r}: {self._url(file.path)} sent more than its signed "
                    f"size ({file.size} bytes); the download was stopped and removed"
                )
            chunk = view[:received]
            while chunk:
                chunk = chunk[out.write(chunk) :]
            hasher.add(buffer, received)
            if time.monotonic() >= next_report:
                if cancelled():
                    raise Cancelled(f"download of {file.path} from catalog {self.name!r} cancelled")
                progress(step, done / file.size)
                next_report = time.monotonic() + _PROGRESS_EVERY
        if done < file.size:
            raise self._cut_short(file, done, None)
        progress(step, 1.0)

    def _get(self, path: str) -> bytes:
        """A small file of the catalog (at most MAX_METADATA bytes), whole."""
        url = self._url(path)
        with _Watchdog(deadline=self.deadline) as watch:
            return self._get_watched(path, url, watch)

    def _get_watched(self, path: str, url: str, watch: _Watchdog) -> bytes:
        connection, response = self._request(path, {}, watch)
        try:
            if response.status != 200:
                raise self._status_error(response, url)
            declared = response.length
            if declared is not None and declared > MAX_METADATA:
                raise CatalogError(
                    f"catalog {self.name!r}: {url} is larger than {MAX_METADATA} bytes"
                )
            try:
                data = response.read(MAX_METADATA + 1 if declared is None else declared)
            except (OSError, http.client.HTTPException) as e:
                raise CatalogError(
                    f"catalog {self.name!r}: reading {url} failed: {watch.reason or _reason(e)}"
                ) from None
        finally:
            connection.close()
        if watch.reason:
            raise CatalogError(f"catalog {self.name!r}: reading {url} failed: {watch.reason}")
        if len(data) > MAX_METADATA or (declared is not None and len(data) != declared):
            raise CatalogError(
                f"catalog {self.name!r}: {url} came {len(data)} bytes long, not as announced"
            )
        return data

    def _get_signed(self, path: str) -> bytes:
        """A small file of the catalog, checked against its signature and the key."""
        data = self._get(path)
        catalog.verify(self.name, path, self.public_key, data, self._get(f"{path}.sig"))
        return data

    def _request(
        self, path: str, headers: dict[str, str], watch: _Watchdog
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """GET `path`: the connection and the response, its head read."""
        connection: http.client.HTTPConnection
        if self._https:
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        watch.attach(connection)
        try:
            connection.request(
                "GET", self._root + path, headers={"User-Agent": "dockvisor", **headers}
            )
            return connection, connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise _Resumable(
                f"catalog {self.name!r} did not answer at {self._url(path)}: "
                f"{watch.reason or _reason(e)}"
            ) from None

    def _url(self, path: str) -> str:
        return self.url + path

    def _status_error(self, response: http.client.HTTPResponse, url: str) -> CatalogError:
        said = f"catalog {self.name!r}: {url} answered {response.status} {response.reason}"
        if 300 <= response.status < 400:
            where = response.getheader("Location") or "nowhere"
            return CatalogError(
                f"{said}, a redirect to {where}: redirects are not followed, configure the "
                "catalog's final URL"
            )
        if response.status == 404 and url.endswith(".sig"):
            return CatalogError(f"{said}: the catalog is not signed")
        return CatalogError(said)

    def _cut_short(
        self, file: CatalogFile, done: int, error: BaseException | str | None
    ) -> _Resumable:
        why = f" ({error if isinstance(error, str) else _reason(error)})" if error else ""
        return _Resumable(
            f"catalog {self.name!r}: the download of {self._url(file.path)} was cut short "
            f"after {done} of {file.size} bytes{why}; run the pull again to resume"
        )

    def _resume_hint(self, error: CatalogError, have: int) -> str:
        if not have:
            return str(error)
        return f"{error}; the {have} bytes received are kept: run the pull again to resume"

    def _write_error(self, error: OSError, file: CatalogFile, into: Path) -> CatalogError:
        if error.errno == errno.ENOSPC:
            return CatalogError(
                f"disk full while downloading {file.path} from catalog {self.name!r} into "
                f"{into}; the partial download was removed"
            )
        return CatalogError(
            f"could not write {file.path} from catalog {self.name!r} into {into}: "
            f"{error.strerror or error}; the partial download was removed"
        )


class _Watchdog:
    """Shuts down a connection that a server holds open without serving it: past
    `deadline` seconds in all, or (for a download) receiving less than `min_rate` bytes
    a second over the last `window` seconds. The read waiting on it then fails, and
    `reason` says why."""

    def __init__(self, *, deadline: float | None, min_rate: int = 0, window: float = 60.0):
        self.deadline = deadline
        self.min_rate = min_rate
        self.window = window
        self.received = 0  # bytes of the body so far (the caller counts)
        self.reason: str | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def attach(self, connection: http.client.HTTPConnection) -> None:
        self._connection = connection

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        started = time.monotonic()
        seen: list[tuple[float, int]] = [(started, 0)]
        while not self._stop.wait(min(1.0, self.window / 4)):
            now = time.monotonic()
            if self.deadline is not None and now - started > self.deadline:
                return self._cut(f"it did not come whole within {self.deadline:g} s")
            if self.min_rate:
                seen.append((now, self.received))
                while len(seen) > 1 and now - seen[1][0] >= self.window:
                    seen.pop(0)
                since, then = seen[0]
                if now - since >= self.window and self.received - then < self.min_rate * (
                    now - since
                ):
                    rate = (self.received - then) / (now - since)
                    return self._cut(
                        f"it came at {rate:.0f} bytes/s for {now - since:.0f} s, less than "
                        f"{self.min_rate} bytes/s"
                    )

    def _cut(self, why: str) -> None:
        self.reason = why
        sock = self._connection.sock if self._connection is not None else None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Hasher:
    """The SHA-256 of the buffers given, computed on a thread of its own while the
    caller receives and writes the next ones; buffer() lends one that is free again."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._todo: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        for _ in range(_BUFFERS):
            self._free.put(memoryview(bytearray(_BUFFER)))
        self._thread = threading.Thread(target=self._run, name="catalog-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buffer, length = item
            self._sha.update(buffer[:length])
            self._free.put(buffer)

    def buffer(self) -> memoryview:
        return self._free.get()

    def add(self, buffer: memoryview, length: int) -> None:
        self._todo.put((buffer, length))

    def hexdigest(self) -> str:
        self._stop()
        return self._sha.hexdigest()

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def __enter__(self) -> _Hasher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop()


def _hash_part(out: io.FileIO, hasher: _Hasher, length: int) -> None:
    """Hash the first `length` bytes of a partial download, leaving `out` after them."""
    left = length
    while left:
        buffer = hasher.buffer()
        read = out.readinto(buffer[: min(_BUFFER, left)])
        if not read:
            raise OSError(errno.EIO, "the partial download shrank while being read")
        hasher.add(buffer, read)
        left -= read


def _matches(path: Path, file: CatalogFile) -> bool:
    if path.stat().st_size != file.size:
        return False
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() == file.sha256


def _remove(part: Path) -> None:
    with suppress(OSError):
        part.unlink(missing_ok=True)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return str(error) or type(error).__name__


def _quiet(step: str, fraction: float) -> None:
    pass


def _never() -> bool:
    return False
