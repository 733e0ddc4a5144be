"""REST routes for Docker inside VMs: /api/v1/vms/{id}/docker/...

Thin: each route calls one method of services/docker.py (which checks privileges, audits
and reaches the engine) and shapes the answer. Image uploads are streamed to a spool file
(not through the 1 MiB body limit of the rest of the API), logs with `follow` are
streamed as the container writes them, and an interactive exec is a websocket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Depends,
    Query,
    Request,
    Response,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.engine_gateway import EngineRoute
from dockvisor.api.problems import status_of
from dockvisor.api.security import (
    StreamCaller,
    authenticate,
    authenticate_token,
    authenticate_websocket,
)
from dockvisor.domain.docker_api import classify
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.requirements import Perm
from dockvisor.engines.docker import API_VERSION, ContainerSpec, PortBinding
from dockvisor.errors import DockvisorError, InvalidInput
from dockvisor.services.docker import EngineAdmission
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane

__all__ = ["MAX_UPLOAD", "UPLOAD_PATHS", "ServerGatewayPolicy", "docker_router"]

log = logging.getLogger(__name__)

MAX_UPLOAD = int(os.environ.get("DOCKVISOR_MAX_UPLOAD", str(16 * 1024**3)))
UPLOAD_PATHS = ("/docker/images/load", "/docker/images/import")

Who = Annotated[Principal, Depends(authenticate)]
Key = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Container = Annotated[str, PathParam(pattern=s.CONTAINER_NAME)]
Image = Annotated[
    str, PathParam(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")
]


# An upload: the tarball's bytes as they are (application/x-tar, or any type: not read).
TARBALL = {
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    "required": True,
}


def needs(privilege: str) -> dict[str, Any]:
    """The declaration of a Docker route: `privilege` on the VM (api/declared.py)."""
    return declare(Perm("/vms/{vm_id}", Privilege(privilege), note="the VM must be running"))


def _json(document: Any) -> Response:
    """An engine document as it came: no model to validate it against, and converting a
    big nested dict for FastAPI costs more than the engine took to make it."""
    return Response(json.dumps(document), media_type="application/json")


async def _spool(request: Request) -> Any:
    """The request body in a temporary file (rewound), refusing more than MAX_UPLOAD."""
    spool = tempfile.TemporaryFile()  # noqa: SIM115 (handed to the caller, who closes it)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise InvalidInput(f"the upload is larger than {MAX_UPLOAD} bytes")
            await run_in_threadpool(spool.write, chunk)
        if size == 0:
            raise InvalidInput("send the tarball as the request body")
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


def docker_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(prefix="/vms/{vm_id}/docker", tags=["docker"], route_class=DeclaredRoute)
    docker = cp.docker

    @api.get("/containers", response_model=list[s.ContainerOut], openapi_extra=needs("Docker.View"))
    def list_containers(
        who: Who,
        vm_id: Key,
        all: Annotated[bool, Query()] = True,  # noqa: A002
    ) -> list[dict[str, Any]]:
        return docker.list_containers(who, vm_id, all=all)

    @api.post(
        "/containers",
        name="docker.container.create",
        status_code=201,
        response_model=s.ContainerBrief,
        openapi_extra=needs("Docker.Manage"),
    )
    def create_container(who: Who, vm_id: Key, body: s.ContainerCreate) -> dict[str, Any]:
        spec = ContainerSpec(
            image=body.image,
            command=body.command,
            name=body.name,
            env=body.env,
            ports=[
                PortBinding(p.host_port, p.container_port, p.protocol, p.host_ip)
                for p in body.ports
            ],
            volumes=body.volumes,
            restart_policy=body.restart,
            cpus=body.cpus,
            memory=body.memory,
            tty=body.tty,
            labels=body.labels,
        )
        return docker.run(who, vm_id, spec, start=body.start)

    @api.get(
        "/containers/{container}",
        openapi_extra=needs("Docker.View"),
        responses={
            200: {
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": "The engine's inspect document",
            }
        },  # fmt: skip
    )
    def inspect_container(who: Who, vm_id: Key, container: Container) -> Response:
        """The engine's own inspect document (passed on as it is)."""
        return _json(docker.inspect(who, vm_id, container))

    @api.delete(
        "/containers/{container}",
        name="docker.container.remove",
        status_code=204,
        openapi_extra=needs("Docker.Manage"),
    )
    def remove_container(
        who: Who, vm_id: Key, container: Container, force: Annotated[bool, Query()] = False
    ) -> Response:
        docker.remove(who, vm_id, container, force=force)
        return Response(status_code=204)

    @api.get(
        "/containers/{container}/logs",
        openapi_extra=needs("Docker.View"),
        responses={200: {"content": {"text/plain": {}}, "description": "The output"}},
    )
    async def container_logs(
        request: Request,
        who: Who,
        vm_id: Key,
        container: Container,
        follow: Annotated[bool, Query()] = False,
        tail: Annotated[int | None, Query(ge=0, le=10_000_000)] = None,
        timestamps: Annotated[bool, Query()] = False,
    ) -> Response:
        """stdout and stderr in the order written, byte for byte; with `follow`, streamed
        until the container stops (its last bytes included) or the client goes away. A
        follower holds no worker thread while it waits, and its engine connection is
        released as soon as it leaves."""
        if not follow:
            output = await run_in_threadpool(
                docker.logs, who, vm_id, container, tail=tail, timestamps=timestamps
            )
            return Response(output, media_type="text/plain; charset=utf-8")
        opened = docker.follow_logs_async(
            who,
            vm_id,
            container,
            tail=tail,
            timestamps=timestamps,
            caller=StreamCaller(cp, request, who).now,
        )
        stream = await opened.__aenter__()  # a refusal is the answer, before any output

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for data in stream:
                    yield data
            except DockvisorError as exc:  # the answer has begun: it can only end here
                log.info("docker.logs-ended", extra={"vm": vm_id, "container": container,
                                                     "error": str(exc)})  # fmt: skip
            finally:  # never waits: safe while the client's leaving cancels this
                await opened.__aexit__(None, None, None)

        return StreamingResponse(
            chunks(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.get(
        "/containers/{container}/stats",
        openapi_extra=needs("Docker.View"),
        responses={
            200: {
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": "The engine's stats document",
            }
        },  # fmt: skip
    )
    def container_stats(who: Who, vm_id: Key, container: Container) -> Response:
        """One sample of the engine's stats document (CPU, memory, network, block I/O)."""
        return _json(docker.stats(who, vm_id, container))

    @api.post(
        "/containers/{container}/exec",
        name="docker.container.exec",
        response_model=s.ExecOut,
        openapi_extra=needs("Docker.Exec"),
    )
    def exec_in_container(
        who: Who, vm_id: Key, container: Container, body: s.ExecRequest
    ) -> s.ExecOut:
        """Run a command to completion; its exit code and output (interactive: the
        websocket at the same path)."""
        result = docker.exec_run(
            who, vm_id, container, body.command, env=body.env, workdir=body.workdir,
            user=body.user,
        )  # fmt: skip
        return s.ExecOut(
            exit_code=result.exit_code,
            stdout=result.stdout.decode(errors="replace"),
            stderr=result.stderr.decode(errors="replace"),
            stdout_base64=base64.b64encode(result.stdout).decode(),
            stderr_base64=base64.b64encode(result.stderr).decode(),
        )

    @api.websocket("/containers/{container}/exec")
    async def exec_interactive(
        ws: WebSocket,
        vm_id: str,
        container: str,
        cmd: Annotated[list[str] | None, Query()] = None,
        tty: Annotated[bool, Query()] = True,
    ) -> None:
        """Binary frames carry the terminal both ways; a text frame {"resize": [rows,
        cols]} resizes it; the server's last text frame is {"exit_code": N}."""
        await ws.accept()
        try:
            who = await run_in_threadpool(authenticate_websocket, cp, ws)
            opened = docker.exec_session_async(
                who, vm_id, container, cmd or ["sh"], tty=tty, caller=StreamCaller(cp, ws, who).now
            )
            sock = await opened.__aenter__()
        except DockvisorError as exc:
            await ws.send_text(json.dumps({"error": str(exc), "code": exc.code,
                                           "status": status_of(exc)}))  # fmt: skip
            await ws.close(code=4000 + status_of(exc))
            return
        try:
            await _bridge(ws, sock)
        finally:
            await opened.__aexit__(None, None, None)

    # Last among the container routes: /exec would match {action} otherwise.
    @api.post(
        "/containers/{container}/{action}",
        name="docker.container.{action}",
        response_model=s.ContainerBrief,
        openapi_extra=needs("Docker.Operate"),
    )
    def container_action(
        who: Who,
        vm_id: Key,
        container: Container,
        action: Literal["start", "stop", "restart", "pause", "unpause", "kill"],
    ) -> dict[str, Any]:
        return docker.act(who, vm_id, container, action)

    # -- images ----------------------------------------------------------------------

    @api.get("/images", response_model=list[s.ImageOut], openapi_extra=needs("Docker.View"))
    def list_images(who: Who, vm_id: Key) -> list[dict[str, Any]]:
        return docker.images(who, vm_id)

    @api.post(
        "/images/load",
        name="docker.image.load",
        response_model=s.ImagesLoaded,
        openapi_extra={
            **needs("Docker.Manage"),
            "requestBody": TARBALL,
        },
    )
    async def load_image(request: Request, who: Who, vm_id: Key) -> s.ImagesLoaded:
        """Load a `docker save` tarball (the request body, streamed)."""
        await run_in_threadpool(docker.images, who, vm_id)  # refuse before the upload
        spool = await _spool(request)
        try:
            loaded = await run_in_threadpool(docker.load_image, who, vm_id, spool)
        finally:
            spool.close()
        return s.ImagesLoaded(images=loaded)

    @api.post(
        "/images/import",
        name="docker.image.import",
        response_model=s.ImagesLoaded,
        openapi_extra={
            **needs("Docker.Manage"),
            "requestBody": TARBALL,
        },
    )
    async def import_image(
        request: Request,
        who: Who,
        vm_id: Key,
        repository: Annotated[str, Query(min_length=1, max_length=255)],
        tag: Annotated[str, Query(min_length=1, max_length=128)] = "latest",
    ) -> s.ImagesLoaded:
        """Import a root filesystem tarball (the request body) as REPOSITORY:TAG."""
        await run_in_threadpool(docker.images, who, vm_id)
        spool = await _spool(request)
        try:
            image = await run_in_threadpool(docker.import_image, who, vm_id, spool, repository, tag)
        finally:
            spool.close()
        return s.ImagesLoaded(images=[image])

    @api.delete(
        "/images/{image:path}",
        name="docker.image.remove",
        status_code=204,
        openapi_extra=needs("Docker.Manage"),
    )
    def remove_image(
        who: Who, vm_id: Key, image: Image, force: Annotated[bool, Query()] = False
    ) -> Response:
        docker.remove_image(who, vm_id, image, force=force)
        return Response(status_code=204)

    # -- the stock docker CLI ---------------------------------------------------------

    @api.get(
        "/environment",
        response_model=s.DockerEnvironment,
        openapi_extra=needs("Docker.View"),
    )
    def docker_environment(who: Who, vm_id: Key) -> s.DockerEnvironment:
        """DOCKER_HOST for the docker CLI through dockvisor's engine gateway; the CLI
        sends the caller's token as `Authorization: Bearer` (see `dockvisor vm endpoint`)."""
        docker.check(who, vm_id)
        if not cp.engine_gateway_url:
            raise InvalidInput("this server runs no engine gateway (dockvisor serve --gateway)")
        return s.DockerEnvironment(
            vm=vm_id,
            docker_host=f"{cp.engine_gateway_url}/vms/{vm_id}",
            header="Authorization: Bearer TOKEN",
            api_version=API_VERSION.lstrip("v"),
        )

    return api


async def _bridge(ws: WebSocket, sock: Any) -> None:
    """Shuttle bytes between the websocket and the exec's hijacked connection (an
    AsyncExecSocket). Both directions are awaited on the event loop: a quiet exec holds
    no thread, and the engine connection closes as soon as either side ends."""

    async def engine_to_client() -> None:
        while data := await sock.recv():
            await ws.send_bytes(data)

    async def client_to_engine() -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect()
            if message.get("bytes") is not None:
                await sock.sendall(message["bytes"])
            elif message.get("text"):
                with suppress(ValueError, TypeError, KeyError, DockvisorError):
                    control = json.loads(message["text"])
                    if "resize" in control:
                        rows, cols = (int(v) for v in control["resize"])
                        await sock.resize(rows, cols)
                    if control.get("eof"):
                        sock.close_write()

    reader = asyncio.create_task(engine_to_client())
    writer = asyncio.create_task(client_to_engine())
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done and not reader.cancelled() and reader.exception() is None:
            code = await sock.exit_code()
            await ws.send_text(json.dumps({"exit_code": code}))
            await ws.close()
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        sock.close()
        for task in (writer, reader):
            task.cancel()
        await asyncio.gather(writer, reader, return_exceptions=True)


class _Admitted:
    """The gateway's admission of one request: where it goes, what to audit when it is
    done, and whether it still stands while it lasts."""

    def __init__(self, cp: ControlPlane, authorization: str | None,
                 admission: EngineAdmission) -> None:  # fmt: skip
        endpoint = admission.endpoint
        self.route = EngineRoute(
            endpoint.host, endpoint.port, admission.ssl_context, endpoint.server_name
        )
        self.finished = admission.finished
        self._cp = cp
        self._authorization = authorization
        self._admission = admission

    async def still_admitted(self) -> bool:
        """No once the server is stopping, the credential the request came with has ended
        (the token revoked or expired, its user deleted or disabled), or the caller as
        that credential says now lacks the request's privilege on the VM. The same
        authentication as for a request: from memory when the token was seen valid a
        moment ago (`cp.recent_tokens`, cleared by every access change), else the
        database in a worker thread; then `EngineAdmission.still_allowed`."""
        if self._cp.stopping.is_set():
            return False
        scheme, _, secret = (self._authorization or "").partition(" ")
        who = self._cp.recent_tokens.get(secret.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            try:
                who = await asyncio.to_thread(authenticate_token, self._cp, self._authorization)
            except DockvisorError as exc:
                return await self._admission.still_allowed(None, str(exc))
        return await self._admission.still_allowed(who)


class ServerGatewayPolicy:
    """The engine gateway's questions, answered by the server: who (the API token the
    docker CLI sends), which VM, and whether they may make this Docker API call there;
    and, while an admitted call lasts, whether that still holds (`still_admitted`)."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def admit(
        self, *, authorization: str | None, vm: str, method: str, path: str, query: str
    ) -> _Admitted:
        try:
            who = authenticate_token(self.cp, authorization)
        except DockvisorError as exc:
            if classify(method, path, query).mutating:
                self.cp.audit.append("anonymous", f"docker {method}"[:64], f"vm:{vm}"[:128],
                                     f"refused:{exc.code}", str(exc))  # fmt: skip
            raise
        admission = self.cp.docker.admit(who, vm, method, path, query)
        return _Admitted(self.cp, authorization, admission)

    def admit_now(
        self, *, authorization: str | None, vm: str, method: str, path: str, query: str
    ) -> _Admitted | None:
        """The answer without blocking, if the caller and the decision are known from a
        moment ago; None sends the request to `admit` in a worker thread."""
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        who = self.cp.recent_tokens.get(secret.strip())
        if who is None:
            return None
        admission = self.cp.docker.admit_now(who, vm, method, path, query)
        return _Admitted(self.cp, authorization, admission) if admission is not None else None
