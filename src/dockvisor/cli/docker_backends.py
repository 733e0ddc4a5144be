"""Docker in one VM, for the CLI: straight to its engine (on the hypervisor host, with
the data directory's client certificate) or through a dockvisor server's API.

Both sides give the same records (services/docker.py's container summaries), so the
commands in cli/docker_cmds.py print the same thing either way.
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import IO, Any, Protocol
from urllib.parse import urlencode

import httpx

from dockvisor import errors
from dockvisor.engines.docker import ContainerSpec, DockerEngine, ExecResult
from dockvisor.engines.streams import FrameReader
from dockvisor.services.docker import container_brief, container_summary

__all__ = [
    "DockerBackend",
    "DockerEnvironment",
    "LocalDocker",
    "RemoteDocker",
    "bridge_terminal",
]


@dataclass(frozen=True)
class DockerEnvironment:
    """Shell environment that points the docker CLI at a VM."""

    env: dict[str, str]
    unset: list[str] = field(default_factory=list)

    def shell(self) -> str:
        lines = [f"export {k}={_quote(v)}" for k, v in self.env.items()]
        if self.unset:
            lines.append("unset " + " ".join(self.unset))
        return "\n".join(lines)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


class DockerBackend(Protocol):
    def ps(self, *, all: bool) -> list[dict[str, Any]]: ...  # noqa: A002
    def inspect(self, container: str) -> dict[str, Any]: ...
    def run(self, spec: ContainerSpec, *, start: bool) -> dict[str, Any]: ...
    def act(self, container: str, action: str) -> dict[str, Any]: ...
    def remove(self, container: str, *, force: bool) -> None: ...
    def logs(self, container: str, *, tail: int | None, timestamps: bool) -> bytes: ...
    def follow_logs(
        self, container: str, *, tail: int | None, timestamps: bool
    ) -> Iterator[bytes]: ...
    def exec_run(self, container: str, command: list[str]) -> ExecResult: ...
    def exec_interactive(self, container: str, command: list[str], *, tty: bool) -> int: ...
    def images(self) -> list[dict[str, Any]]: ...
    def load(self, tarball: IO[bytes]) -> list[str]: ...
    def remove_image(self, image: str, *, force: bool) -> None: ...


# -- straight to the engine ------------------------------------------------------------


class LocalDocker:
    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine

    def ps(self, *, all: bool) -> list[dict[str, Any]]:  # noqa: A002
        return [container_summary(c) for c in self.engine.containers(all=all)]

    def inspect(self, container: str) -> dict[str, Any]:
        return self.engine.inspect(container)

    def run(self, spec: ContainerSpec, *, start: bool) -> dict[str, Any]:
        cid = self.engine.run(spec) if start else self.engine.create_container(spec)
        return container_brief(self.engine.inspect(cid))

    def act(self, container: str, action: str) -> dict[str, Any]:
        getattr(self.engine, action)(container)
        return container_brief(self.engine.inspect(container))

    def remove(self, container: str, *, force: bool) -> None:
        self.engine.remove(container, force=force)

    def logs(self, container: str, *, tail: int | None, timestamps: bool) -> bytes:
        return self.engine.logs_bytes(container, tail=tail, timestamps=timestamps)

    def follow_logs(self, container: str, *, tail: int | None, timestamps: bool) -> Iterator[bytes]:
        with self.engine.follow_logs(container, tail=tail, timestamps=timestamps) as stream:
            for _kind, data in stream:
                yield data

    def exec_run(self, container: str, command: list[str]) -> ExecResult:
        return self.engine.exec_run(container, command)

    def exec_interactive(self, container: str, command: list[str], *, tty: bool) -> int:
        sock = self.engine.exec_socket(container, command, tty=tty, stdin=True)
        with sock:

            def resize(rows: int, cols: int) -> None:
                with suppress(errors.DockvisorError):
                    self.engine.exec_resize(sock.exec_id, rows, cols)

            bridge_terminal(
                sock.sendall, sock.recv, sock.close_write, resize if tty else None,
                multiplexed=not tty,
            )  # fmt: skip
        code = self.engine.exec_inspect(sock.exec_id).get("ExitCode")
        return int(code) if code is not None else 1

    def images(self) -> list[dict[str, Any]]:
        return [
            {
                "id": i.get("Id", ""),
                "tags": i.get("RepoTags") or [],
                "size": i.get("Size", 0),
                "created": i.get("Created", 0),
            }  # fmt: skip
            for i in self.engine.images()
        ]

    def load(self, tarball: IO[bytes]) -> list[str]:
        return self.engine.load_image(tarball)

    def remove_image(self, image: str, *, force: bool) -> None:
        self.engine.remove_image(image, force=force)


# -- through a dockvisor server --------------------------------------------------------


class RemoteDocker:
    """The VM's /docker routes of a server's API. `api` is a cli.backends.ApiClient."""

    def __init__(self, api: Any, vm_id: str, token: str) -> None:
        self.api = api
        self.base = f"/vms/{vm_id}/docker"
        self.token = token

    def ps(self, *, all: bool) -> list[dict[str, Any]]:  # noqa: A002
        return list(self.api.request("GET", f"{self.base}/containers", params={"all": all}))

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(self.api.request("GET", f"{self.base}/containers/{container}"))

    def run(self, spec: ContainerSpec, *, start: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "image": spec.image,
            "command": list(spec.command) if spec.command else None,
            "name": spec.name,
            "env": dict(spec.env),
            "ports": [
                {
                    "host_port": p[0],
                    "container_port": p[1],
                    "protocol": p[2] if len(p) > 2 else "tcp",
                    "host_ip": p[3] if len(p) > 3 else "0.0.0.0",
                }  # fmt: skip
                for p in spec.ports
            ],
            "volumes": list(spec.volumes),
            "restart": spec.restart_policy,
            "cpus": spec.cpus,
            "memory": spec.memory,
            "tty": spec.tty,
            "start": start,
        }
        return dict(self.api.request("POST", f"{self.base}/containers", json=body))

    def act(self, container: str, action: str) -> dict[str, Any]:
        return dict(self.api.request("POST", f"{self.base}/containers/{container}/{action}"))

    def remove(self, container: str, *, force: bool) -> None:
        self.api.request("DELETE", f"{self.base}/containers/{container}", params={"force": force})

    def logs(self, container: str, *, tail: int | None, timestamps: bool) -> bytes:
        params: dict[str, Any] = {"timestamps": timestamps}
        if tail is not None:
            params["tail"] = tail
        with self.api.stream("GET", f"{self.base}/containers/{container}/logs",
                             params=params) as response:  # fmt: skip
            return bytes(response.read())

    def follow_logs(self, container: str, *, tail: int | None, timestamps: bool) -> Iterator[bytes]:
        params: dict[str, Any] = {"follow": True, "timestamps": timestamps}
        if tail is not None:
            params["tail"] = tail
        with self.api.stream("GET", f"{self.base}/containers/{container}/logs", params=params,
                             timeout=httpx.Timeout(30, read=None)) as response:  # fmt: skip
            yield from response.iter_raw()

    def exec_run(self, container: str, command: list[str]) -> ExecResult:
        """Over the exec websocket, not the JSON route: its output is bytes as they are
        (the JSON answer holds text), and no input is given."""
        out, err = bytearray(), bytearray()
        frames = FrameReader()
        result: dict[str, Any] = {}
        with self._exec_socket(container, command, tty=False) as ws:
            ws.send(json.dumps({"eof": True}))
            while (data := self._ws_recv(ws, result)) is not None:
                for kind, payload in frames.feed(data):
                    (err if kind == "stderr" else out).extend(payload)
        return ExecResult(self._exit_code(result), bytes(out), bytes(err))

    def _exec_socket(self, container: str, command: list[str], *, tty: bool) -> Any:
        from websockets.sync.client import connect

        url = self.api.server.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        params = urlencode([("cmd", c) for c in command] + [("tty", str(tty).lower())])
        address = f"{url}/api/v1{self.base}/containers/{container}/exec?{params}"
        return connect(address, additional_headers={"Authorization": f"Bearer {self.token}"},
                       max_size=None, open_timeout=30)  # fmt: skip

    @staticmethod
    def _ws_recv(ws: Any, result: dict[str, Any]) -> bytes | None:
        """The next output bytes; None at the end (the server's last text frame, kept
        in `result`, says how it ended)."""
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                message = ws.recv()
            except ConnectionClosed:
                return None
            if isinstance(message, bytes):
                return message
            result.update(json.loads(message))
            if "error" in result:
                return None

    @staticmethod
    def _exit_code(result: dict[str, Any]) -> int:
        if "error" in result:
            cls = errors.Forbidden if result.get("status") == 403 else errors.DockvisorError
            if result.get("status") == 404:
                cls = errors.NotFound
            raise cls(str(result["error"]))
        code = result.get("exit_code")
        return int(code) if code is not None else 1

    def exec_interactive(self, container: str, command: list[str], *, tty: bool) -> int:
        from websockets.exceptions import ConnectionClosed

        result: dict[str, Any] = {}
        with self._exec_socket(container, command, tty=tty) as ws:

            def recv() -> bytes:
                return self._ws_recv(ws, result) or b""

            def close_write() -> None:
                with suppress(ConnectionClosed):
                    ws.send(json.dumps({"eof": True}))

            def resize(rows: int, cols: int) -> None:
                with suppress(ConnectionClosed):
                    ws.send(json.dumps({"resize": [rows, cols]}))

            bridge_terminal(ws.send, recv, close_write, resize if tty else None,
                            multiplexed=not tty)  # fmt: skip
        return self._exit_code(result)

    def images(self) -> list[dict[str, Any]]:
        return list(self.api.request("GET", f"{self.base}/images"))

    def load(self, tarball: IO[bytes]) -> list[str]:
        data = self.api.request(
            "POST", f"{self.base}/images/load", content=_chunks(tarball),
            headers={"Content-Type": "application/x-tar"}, timeout=None,
        )  # fmt: skip
        return list(data["images"])

    def remove_image(self, image: str, *, force: bool) -> None:
        self.api.request("DELETE", f"{self.base}/images/{image}", params={"force": force})


def _chunks(f: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


# -- a terminal on a raw stream ---------------------------------------------------------


@contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def bridge_terminal(
    send: Callable[[bytes], Any],
    recv: Callable[[], bytes],
    close_write: Callable[[], None],
    resize: Callable[[int, int], None] | None,
    *,
    multiplexed: bool = False,
) -> None:
    """Copy stdin to `send` and `recv` to stdout until the remote side ends. With
    `resize` (a TTY exec) and a terminal on stdin, the terminal goes raw and its size is
    passed on. Without a TTY the output is Docker's multiplexed stream (`multiplexed`):
    its stdout goes to stdout and its stderr to stderr, frame headers removed."""
    interactive = resize is not None and sys.stdin.isatty()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    done = threading.Event()
    frames = FrameReader()

    def pump_out() -> None:
        try:
            while data := recv():
                if not multiplexed:
                    out.write(data)
                    out.flush()
                    continue
                for kind, payload in frames.feed(data):
                    sink = err if kind == "stderr" else out
                    sink.write(payload)
                    sink.flush()
        finally:
            done.set()

    if interactive and resize is not None:
        with suppress(OSError):
            size = os.get_terminal_size(sys.stdin.fileno())
            resize(size.lines, size.columns)
    reader = threading.Thread(target=pump_out, daemon=True)
    with _raw_terminal(interactive):
        reader.start()
        fd = sys.stdin.fileno()
        while not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                close_write()
                break
            send(data)
        reader.join()
