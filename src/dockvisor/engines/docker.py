"""A small client of the Docker Engine API, for what dockvisor itself needs from a VM's engine.

Speaks HTTP to a `DockerEndpoint` (the address comes from the hypervisor adapter, never
from a request). Errors come back as dockvisor errors carrying the engine's own message.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from dockvisor.domain.model import DockerEndpoint
from dockvisor.errors import (
    AlreadyExists,
    DockvisorError,
    GuestTimeout,
    HypervisorError,
    InvalidInput,
    NotFound,
)

__all__ = ["API_VERSION", "DockerEngine", "EngineError"]

API_VERSION = "v1.41"  # Docker 20.10, what the built-in guest runs


class EngineError(HypervisorError):
    code = "engine-error"


def _raise_for(response: httpx.Response, doing: str) -> None:
    if response.is_success:
        return
    try:
        message = response.json().get("message", response.text)
    except ValueError:
        message = response.text
    cls: type[DockvisorError] = {404: NotFound, 409: AlreadyExists, 400: InvalidInput}.get(
        response.status_code, EngineError
    )
    raise cls(f"{doing}: {message.strip()}")


def demultiplex(raw: bytes) -> tuple[bytes, bytes]:
    """Split a non-TTY attach/logs stream into (stdout, stderr)."""
    out, err = bytearray(), bytearray()
    i = 0
    while i + 8 <= len(raw):
        kind, size = raw[i], int.from_bytes(raw[i + 4 : i + 8], "big")
        chunk = raw[i + 8 : i + 8 + size]
        (err if kind == 2 else out).extend(chunk)
        i += 8 + size
    return bytes(out), bytes(err)


class DockerEngine:
    """The Docker engine of one VM."""

    def __init__(self, endpoint: DockerEndpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self._client = httpx.Client(
            base_url=f"{endpoint.base_url}/{API_VERSION}", timeout=timeout, trust_env=False
        )

    def __enter__(self) -> DockerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def ping(self) -> bool:
        """True if the engine answers its health check now."""
        try:
            response = self._client.get("/_ping", timeout=3.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.text == "OK"

    def wait_until_ready(self, timeout: float, *, on_wait: Any = None) -> float:
        """Wait for the engine to answer; the seconds it took. GuestTimeout after `timeout`."""
        start = time.monotonic()
        while not self.ping():
            waited = time.monotonic() - start
            if waited > timeout:
                raise GuestTimeout(
                    f"the Docker engine at {self.endpoint.docker_host} did not answer "
                    f"within {timeout:.0f} s"
                )
            if on_wait:
                on_wait(waited)
            time.sleep(0.25)
        return time.monotonic() - start

    def version(self) -> dict[str, Any]:
        response = self._client.get("/version")
        _raise_for(response, "reading the engine version")
        return dict(response.json())

    def info(self) -> dict[str, Any]:
        response = self._client.get("/info")
        _raise_for(response, "reading engine info")
        return dict(response.json())

    def containers(self, *, all: bool = True) -> list[dict[str, Any]]:  # noqa: A002
        response = self._client.get("/containers/json", params={"all": "1" if all else "0"})
        _raise_for(response, "listing containers")
        return list(response.json())

    def images(self) -> list[dict[str, Any]]:
        response = self._client.get("/images/json")
        _raise_for(response, "listing images")
        return list(response.json())

    def create(
        self, image: str, command: list[str] | None = None, *, name: str | None = None
    ) -> str:
        body: dict[str, Any] = {"Image": image}
        if command:
            body["Cmd"] = command
        params = {"name": name} if name else {}
        response = self._client.post("/containers/create", params=params, json=body)
        _raise_for(response, f"creating a container from {image}")
        return str(response.json()["Id"])

    def start(self, container: str) -> None:
        response = self._client.post(f"/containers/{container}/start")
        _raise_for(response, f"starting container {container}")

    def run(self, image: str, command: list[str] | None = None, *, name: str | None = None) -> str:
        """Create and start a container; its id. Nothing is left if the start fails."""
        cid = self.create(image, command, name=name)
        try:
            self.start(cid)
        except DockvisorError:
            self.remove(cid, force=True)
            raise
        return cid

    def wait(self, container: str, timeout: float = 60.0) -> int:
        response = self._client.post(f"/containers/{container}/wait", timeout=timeout)
        _raise_for(response, f"waiting for container {container}")
        return int(response.json()["StatusCode"])

    def logs(self, container: str) -> str:
        response = self._client.get(
            f"/containers/{container}/logs", params={"stdout": "1", "stderr": "1"}
        )
        _raise_for(response, f"reading logs of {container}")
        out, err = demultiplex(response.content)
        return (out + err).decode(errors="replace")

    def run_to_completion(self, image: str, command: list[str], *, timeout: float = 60.0) -> str:
        """Run a command in a fresh container, remove it, and return what it printed."""
        cid = self.run(image, command)
        try:
            status = self.wait(cid, timeout)
            output = self.logs(cid)
        finally:
            self.remove(cid, force=True)
        if status != 0:
            raise EngineError(f"{' '.join(command)} exited with {status}: {output.strip()}")
        return output

    def remove(self, container: str, *, force: bool = False) -> None:
        response = self._client.delete(
            f"/containers/{container}", params={"force": "1" if force else "0"}
        )
        _raise_for(response, f"removing container {container}")
