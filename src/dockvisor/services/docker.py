"""Docker inside delegated VMs: containers and images, checked and audited.

Every call names a VM by its id; the caller's privilege is checked on the VM's ACL path
(Docker.View to read, Docker.Operate to start/stop/restart/pause/kill, Docker.Manage to
create and remove containers and images, Docker.Exec to exec and attach), a VM they
cannot view does not exist for them, and every write is audited, refused or not. The
engine's address comes from the hypervisor adapter, never from the request.

While a VM runs, a watch follows its engine's event stream and keeps its container list
current (a re-list on every container event, and after the stream breaks), and
publishes container events for the /events stream. When the VM is off or its engine
does not answer, reads fail with EngineUnavailable (503) saying why: no stale data.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import IO, Any

from dockvisor.domain.docker_api import EngineRequest, classify
from dockvisor.domain.model import DockerEndpoint
from dockvisor.domain.privileges import Privilege
from dockvisor.engines.async_engine import AsyncExecSocket
from dockvisor.engines.docker import (
    ContainerSpec,
    DockerEngine,
    EngineStream,
    ExecResult,
    ExecSocket,
)
from dockvisor.errors import (
    BadPowerState,
    DockvisorError,
    EngineUnavailable,
    Forbidden,
    InvalidInput,
    Unsupported,
)
from dockvisor.services.engines import EngineAccess
from dockvisor.services.events import Event, EventBroker
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import chain_of, vm_ref
from dockvisor.services.operations import Operations
from dockvisor.store.models import VmRow

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINER_ACTIONS",
    "RECHECK_EVERY",
    "DockerOperations",
    "EngineAdmission",
    "CurrentCaller",
    "container_brief",
    "container_summary",
]

P = Privilege
CONTAINER_ACTIONS = {
    "start": P.DOCKER_OPERATE,
    "stop": P.DOCKER_OPERATE,
    "restart": P.DOCKER_OPERATE,
    "pause": P.DOCKER_OPERATE,
    "unpause": P.DOCKER_OPERATE,
    "kill": P.DOCKER_OPERATE,
}
# A container id (hex) or name, an image reference: what may appear in a request path.
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,254}")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# A stream that waits (logs?follow, an interactive exec) checks at least this often, in
# seconds, that its caller may still see it, and ends when they may not.
RECHECK_EVERY = 1.0
# The caller of a stream as they are now (their groups as they are now), or None once
# their credential has ended: the API passes one to every stream it opens.
CurrentCaller = Callable[[], Awaitable[Principal | None]]


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value) or ".." in value:
        raise InvalidInput(f"{value[:80]!r} is not a valid {what}")
    return value


def container_summary(c: dict[str, Any]) -> dict[str, Any]:
    """A container as lists show it (the engine's /containers/json entry, trimmed)."""
    return {
        "id": c.get("Id", ""),
        "name": (c.get("Names") or ["/"])[0].lstrip("/"),
        "image": c.get("Image", ""),
        "command": c.get("Command", ""),
        "state": c.get("State", ""),
        "status": c.get("Status", ""),
        "created": c.get("Created", 0),
        "ports": [
            {
                "host_ip": p.get("IP"),
                "host_port": p.get("PublicPort"),
                "container_port": p.get("PrivatePort"),
                "protocol": p.get("Type", "tcp"),
            }
            for p in c.get("Ports") or []
        ],
        "labels": c.get("Labels") or {},
    }


def container_brief(info: dict[str, Any]) -> dict[str, Any]:
    """A container after a change, from the engine's inspect document."""
    state = info.get("State") or {}
    return {
        "id": info.get("Id", ""),
        "name": str(info.get("Name", "")).lstrip("/"),
        "image": (info.get("Config") or {}).get("Image", ""),
        "state": state.get("Status", ""),
        "exit_code": state.get("ExitCode"),
    }


class _Watch:
    """Follows one VM's engine: its containers, as of the last event or re-list."""

    def __init__(self, owner: DockerOperations, row: VmRow) -> None:
        self.vm_id = row.id
        self.chain = chain_of(row)
        self._owner = owner
        self._lock = threading.Lock()
        self._containers: list[dict[str, Any]] | None = None
        self._stream: EngineStream[dict[str, Any]] | None = None
        self._stopped = threading.Event()
        self.error = ""
        self._thread = threading.Thread(target=self._run, name=f"docker-watch-{row.id}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def containers(self) -> list[dict[str, Any]] | None:
        """The list while the event stream is followed; None when it is not."""
        with self._lock:
            return None if self._containers is None else list(self._containers)

    def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            with suppress(Exception):
                stream.close()

    def _relist(self, engine: DockerEngine) -> None:
        listed = [container_summary(c) for c in engine.containers(all=True)]
        with self._lock:
            self._containers = listed

    def _run(self) -> None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                engine = self._owner.engine_of(self.vm_id)
                # Subscribe first, then list: nothing that happens between is missed.
                self._stream = engine.events(filters={"type": ["container"]})
                self._relist(engine)
                self.error = ""
                delay = 0.5
                for event in self._stream:
                    if self._stopped.is_set():
                        break
                    self._relist(engine)
                    self._publish(event)
            except DockvisorError as exc:
                self.error = str(exc)
                self._owner.forget_endpoint(self.vm_id)
            except Exception as exc:  # a broken stream: re-list on the next round
                self.error = f"following the engine's events: {exc}"
                self._owner.forget_endpoint(self.vm_id)
            finally:
                with self._lock:
                    self._containers = None
                if self._stream is not None:
                    with suppress(Exception):
                        self._stream.close()
                    self._stream = None
            if not self._owner.still_running(self.vm_id):
                break
            self._stopped.wait(delay)
            delay = min(delay * 2, 10.0)
        self._owner.forget_watch(self.vm_id, self)

    def _publish(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        container = actor.get("ID") or event.get("id") or ""
        self._owner.broker.publish(
            Event(
                "container",
                str(event.get("Action") or event.get("status") or "changed"),
                f"/vms/{self.vm_id}/containers/{container}",
                self.chain,
                None,
                {
                    "vm": self.vm_id,
                    "id": container,
                    "name": attributes.get("name", ""),
                    "image": attributes.get("image", ""),
                },  # fmt: skip
            )
        )


class EngineAdmission:
    """One request through the engine gateway, admitted: where to send it, what to audit
    when it is done, and whether it still stands while it lasts (`still_allowed`)."""

    def __init__(
        self,
        owner: DockerOperations,
        who: Principal,
        row: VmRow,
        request: EngineRequest,
        endpoint: DockerEndpoint,
    ) -> None:
        self._owner = owner
        self._who = who
        self._row = row
        self.request = request
        self.endpoint = endpoint
        self.ssl_context = owner.engines.pki.client_context() if endpoint.tls else None
        self._ended = False

    def finished(self, status: int) -> None:
        if status in (502, 503):  # the engine was not where it was thought to be
            self._owner.forget_endpoint(self._row.id)
        if self.request.mutating:
            result = "accepted" if status < 400 else f"engine:{status}"
            self._owner.audit_write(self._who, self._row.id, self.request, result)

    async def still_allowed(self, who: Principal | None, why: str = "") -> bool:
        """Whether the request may go on (a `logs -f`, an `exec -it`, an `events` that
        lasts): asked about once a second while it does, on the gateway's event loop.

        A stream never outlives its credential nor its privilege. `who` is the caller as
        their credential says now (their groups as they are now), None once that
        credential has ended (`why` says how: revoked, expired, its user gone or
        disabled); the request's privilege on the VM is checked again for them, from
        memory when a yes of the last second is known (the cache every access change
        clears), else in a worker thread. A no is final, and recorded in the audit log
        ("ended:credential" or "ended:privilege") in a worker thread, not awaited: the
        stream is closed first.
        """
        if self._ended:
            return False
        if who is not None:
            privileges = self.request.privileges
            key = (who.user_id, who.group_ids, self._row.id, privileges)
            if self._owner._granted_recently(key) is not None:
                return True  # from memory, on the event loop
            try:
                await asyncio.to_thread(self._owner._row, who, self._row.id, privileges)
            except DockvisorError as exc:
                result, why = "ended:privilege", str(exc)
            else:
                return True
        else:
            result = "ended:credential"
        self._ended = True
        asyncio.get_running_loop().run_in_executor(None, self._record_end, result, why)
        return False

    def _record_end(self, result: str, why: str) -> None:
        target = f"/{self.request.target}" if self.request.target else ""
        action, obj = f"docker.{self.request.action}"[:64], f"vm:{self._row.id}{target}"[:128]
        try:
            self._owner.ops.audit.append(self._who.name, action, obj, result, why)
        except Exception:
            log.exception("engine gateway: could not record the end of %s", self.request.action)


class DockerOperations:
    def __init__(self, ops: Operations, engines: EngineAccess, broker: EventBroker) -> None:
        self.ops = ops
        self.engines = engines
        self.broker = broker
        self._lock = threading.Lock()
        self._clients: dict[str, DockerEngine] = {}
        self._endpoints: dict[str, tuple[tuple[Any, ...], DockerEndpoint]] = {}
        self._granted: dict[tuple[Any, ...], tuple[float, VmRow]] = {}
        ops.access.on_invalidate.append(self.forget_grants)
        self._watches: dict[str, _Watch] = {}
        # Streams that wait, to end when the server stops: (their loop, their close).
        self._waiting: set[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = set()

    def close(self) -> None:
        self.end_streams()
        with self._lock:
            watches, self._watches = list(self._watches.values()), {}
            clients, self._clients = list(self._clients.values()), {}
        for watch in watches:
            watch.stop()
        for client in clients:
            client.close()

    def end_streams(self) -> None:
        """End every open follow and exec stream now (from any thread): the server stops."""
        with self._lock:
            waiting, self._waiting = list(self._waiting), set()
        for loop, close in waiting:
            with suppress(RuntimeError):  # that loop has ended already
                loop.call_soon_threadsafe(close)

    # -- reaching an engine ----------------------------------------------------------

    def _row(
        self, who: Principal, vm_id: str, privilege: Privilege | tuple[Privilege, ...]
    ) -> VmRow:
        """The VM's row if `who` holds `privilege` there (or any one of several)."""
        key = (who.user_id, who.group_ids, vm_id, privilege)
        if (known := self._granted_recently(key)) is not None:
            return known
        row = self.ops.vm_row(who, vm_id)  # NotFound for a VM they cannot view
        needs = privilege if isinstance(privilege, tuple) else (privilege,)
        chain = chain_of(row)
        held = self.ops.access.privileges(who, chain)
        if not any(p in held for p in needs):
            raise Forbidden(f"{who.name} lacks {' or '.join(needs)} on {chain[-1]}")
        if not row.docker_ready:
            raise Unsupported(f"VM {row.name} has no Docker engine (its template has none)")
        with self._lock:
            if len(self._granted) > 10_000:
                self._granted.clear()
            self._granted[key] = (time.monotonic() + self.ops.access.ttl, row)
        return row

    def _granted_recently(self, key: tuple[Any, ...]) -> VmRow | None:
        """A yes given within the ACL cache's lifetime (a second), which an access change
        in this process forgets at once: like the ACL, no database trip for it."""
        with self._lock:
            entry = self._granted.get(key)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def forget_grants(self) -> None:
        with self._lock:
            self._granted.clear()

    def check(self, who: Principal, vm_id: str, privilege: Privilege = P.DOCKER_VIEW) -> None:
        """NotFound, Forbidden or Unsupported unless `who` may use the VM's engine so."""
        self._row(who, vm_id, privilege)

    def _endpoint(self, row: VmRow) -> DockerEndpoint:
        if row.state != "running":
            raise EngineUnavailable(
                f"VM {row.name} is {row.state}: its Docker engine runs only while the VM "
                "runs; start the VM first"
            )
        # The address changes only when the VM (re)starts, which changes its row; asking
        # the hypervisor on every call would cost more than the engine call itself.
        key = (row.host_id, row.name, row.updated)
        with self._lock:
            cached = self._endpoints.get(row.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            endpoint = self.ops.hosts.driver(row.host_id).docker_endpoint(vm_ref(row))
        except BadPowerState as exc:
            raise EngineUnavailable(f"VM {row.name}: {exc}") from None
        with self._lock:
            self._endpoints[row.id] = (key, endpoint)
        return endpoint

    def forget_endpoint(self, vm_id: str) -> None:
        """Ask the hypervisor again next time (the engine did not answer where it was)."""
        with self._lock:
            self._endpoints.pop(vm_id, None)

    def _engine(self, row: VmRow) -> DockerEngine:
        endpoint = self._endpoint(row)
        with self._lock:
            client = self._clients.get(row.id)
            if client is not None and client.endpoint == endpoint:
                return client
            self._clients[row.id] = self.engines.engine(endpoint)
            stale, client = client, self._clients[row.id]
        if stale is not None:
            stale.close()
        return client

    def engine_of(self, vm_id: str) -> DockerEngine:
        """The engine client of a VM, for the watch (no caller to check)."""
        with self.ops.db.read() as session:
            row = session.get(VmRow, vm_id)
        if row is None:
            raise EngineUnavailable(f"VM {vm_id} is gone")
        return self._engine(row)

    def still_running(self, vm_id: str) -> bool:
        with self.ops.db.read() as session:
            row = session.get(VmRow, vm_id)
        return row is not None and row.state == "running"

    def forget_watch(self, vm_id: str, watch: _Watch) -> None:
        with self._lock:
            if self._watches.get(vm_id) is watch:
                del self._watches[vm_id]

    def _watch(self, row: VmRow) -> _Watch:
        with self._lock:
            watch = self._watches.get(row.id)
            if watch is None:
                watch = self._watches[row.id] = _Watch(self, row)
            return watch

    @contextmanager
    def _using(self, who: Principal, vm_id: str, privilege: Privilege,
               action: str | None = None, target: str = "") -> Iterator[DockerEngine]:  # fmt: skip
        """The VM's engine for one call; with `action`, the call is audited."""
        obj = f"vm:{vm_id}" + (f"/{target}" if target else "")
        try:
            if action is None:
                row = self._row(who, vm_id, privilege)
                yield self._engine(row)
                return
            with self.ops.audited(who, action, obj[:128]):
                row = self._row(who, vm_id, privilege)
                yield self._engine(row)
        except EngineUnavailable:
            self.forget_endpoint(vm_id)
            raise

    # -- containers ------------------------------------------------------------------

    def list_containers(
        self,
        who: Principal,
        vm_id: str,
        *,
        all: bool = True,  # noqa: A002
    ) -> list[dict[str, Any]]:
        row = self._row(who, vm_id, P.DOCKER_VIEW)
        engine = self._engine(row)
        watched = self._watch(row).containers()
        listed = (
            watched if watched is not None else [container_summary(c) for c in engine.containers()]
        )
        return listed if all else [c for c in listed if c["state"] == "running"]

    def inspect(self, who: Principal, vm_id: str, container: str) -> dict[str, Any]:
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, P.DOCKER_VIEW) as engine:
            return engine.inspect(container)

    def run(
        self, who: Principal, vm_id: str, spec: ContainerSpec, *, start: bool = True
    ) -> dict[str, Any]:
        """Create (and start) a container; nothing is left if either step fails."""
        target = f"container:{spec.name}" if spec.name else f"image:{spec.image}"
        with self._using(who, vm_id, P.DOCKER_MANAGE, "docker.container.create", target) as engine:
            cid = engine.run(spec) if start else engine.create_container(spec)
            return container_brief(engine.inspect(cid))

    def act(self, who: Principal, vm_id: str, container: str, action: str) -> dict[str, Any]:
        if action not in CONTAINER_ACTIONS:
            raise InvalidInput(f"unknown action {action!r} (use {', '.join(CONTAINER_ACTIONS)})")
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, CONTAINER_ACTIONS[action], f"docker.container.{action}",
                         f"container:{container}") as engine:  # fmt: skip
            getattr(engine, action)(container)
            return container_brief(engine.inspect(container))

    def remove(self, who: Principal, vm_id: str, container: str, *, force: bool = False) -> None:
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, P.DOCKER_MANAGE, "docker.container.remove",
                         f"container:{container}") as engine:  # fmt: skip
            engine.remove(container, force=force)

    def logs(self, who: Principal, vm_id: str, container: str, *, tail: int | None = None,
             timestamps: bool = False) -> bytes:  # fmt: skip
        """What the container wrote, byte for byte (stdout and stderr as written)."""
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, P.DOCKER_VIEW) as engine:
            return engine.logs_bytes(container, tail=tail, timestamps=timestamps)

    def follow_logs(self, who: Principal, vm_id: str, container: str, *,
                    tail: int | None = None, timestamps: bool = False
                    ) -> EngineStream[tuple[str, bytes]]:  # fmt: skip
        """The container's output as it comes; the caller closes the stream."""
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, P.DOCKER_VIEW) as engine:
            return engine.follow_logs(container, tail=tail, timestamps=timestamps)

    # -- streams that wait: asynchronous, no thread held while they wait -------------

    async def _engine_async(self, who: Principal, vm_id: str, privilege: Privilege) -> DockerEngine:
        """`_engine(_row(...))` for an event loop: from memory when the answer is known
        (a grant of the last second, the engine's address), else in a worker thread."""
        row = self._granted_recently((who.user_id, who.group_ids, vm_id, privilege))
        if row is None:
            row = await asyncio.to_thread(self._row, who, vm_id, privilege)
        with self._lock:
            cached = self._endpoints.get(row.id)
            client = self._clients.get(row.id)
        known = cached is not None and cached[0] == (row.host_id, row.name, row.updated)
        if known and row.state == "running" and client is not None:
            assert cached is not None
            if client.endpoint == cached[1]:
                return client
        return await asyncio.to_thread(self._engine, row)

    async def _still_allowed(
        self, who: Principal, vm_id: str, privilege: Privilege, caller: CurrentCaller | None
    ) -> bool:
        if caller is not None:
            now = await caller()
            if now is None:
                return False  # the credential has ended
            who = now
        if self._granted_recently((who.user_id, who.group_ids, vm_id, privilege)) is not None:
            return True  # from memory, on the event loop
        try:
            await asyncio.to_thread(self._row, who, vm_id, privilege)
        except DockvisorError:
            return False
        return True

    @asynccontextmanager
    async def _waiting_stream(
        self,
        who: Principal,
        vm_id: str,
        privilege: Privilege,
        close: Callable[[], None],
        caller: CurrentCaller | None,
    ) -> AsyncIterator[None]:
        """Keep a waiting stream honest: `close` it when its caller loses `privilege`
        on the VM, as `caller()` says they are now, or their credential ends (`caller()`
        gives None; checked every RECHECK_EVERY seconds),
        and when the server stops (`end_streams`)."""
        entry = (asyncio.get_running_loop(), close)
        with self._lock:
            self._waiting.add(entry)

        async def recheck() -> None:
            while True:
                await asyncio.sleep(RECHECK_EVERY)
                if not await self._still_allowed(who, vm_id, privilege, caller):
                    close()
                    return

        task = asyncio.create_task(recheck())
        try:
            yield
        finally:
            task.cancel()
            close()
            with self._lock:
                self._waiting.discard(entry)

    @asynccontextmanager
    async def follow_logs_async(
        self,
        who: Principal,
        vm_id: str,
        container: str,
        *,
        tail: int | None = None,
        timestamps: bool = False,
        caller: CurrentCaller | None = None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """The container's output as it comes, without a thread held while it waits:
        `async with docker.follow_logs_async(who, vm, c) as stream: async for data in
        stream`. Docker.View is checked before (errors raise from `async with`) and again
        every second while it runs (as `caller()` says the caller is now); the stream ends,
        its engine connection released, when the caller leaves the block, loses
        Docker.View, their credential ends (`caller()` gives None), or the server stops."""
        _check(_CONTAINER, container, "container name or id")
        try:
            engine = await self._engine_async(who, vm_id, P.DOCKER_VIEW)
            stream = await engine.aio.follow_logs(container, tail=tail, timestamps=timestamps)
        except EngineUnavailable:
            self.forget_endpoint(vm_id)
            raise

        async def data() -> AsyncIterator[bytes]:
            # Watched from the first read on: a stream nobody reads holds only its socket.
            async with self._waiting_stream(who, vm_id, P.DOCKER_VIEW, stream.close, caller):
                async for _kind, chunk in stream:
                    yield chunk

        try:
            yield data()
        finally:
            stream.close()

    @asynccontextmanager
    async def exec_session_async(
        self,
        who: Principal,
        vm_id: str,
        container: str,
        command: list[str],
        *,
        tty: bool = True,
        caller: CurrentCaller | None = None,
    ) -> AsyncIterator[AsyncExecSocket]:
        """An interactive exec that holds no thread while it waits (the websocket):
        its hijacked connection, with `resize` and `exit_code`. Docker.Exec is checked
        and the exec audited when it opens, and checked again every second while it
        runs; it ends as `follow_logs_async` does."""
        _check(_CONTAINER, container, "container name or id")
        if not command:
            raise InvalidInput("exec needs a command")
        action, obj = "docker.container.exec", f"vm:{vm_id}/container:{container}"[:128]

        def refused(exc: DockvisorError) -> None:
            self.ops.audit.append(who.name, action, obj, f"refused:{exc.code}", str(exc))

        try:
            engine = await self._engine_async(who, vm_id, P.DOCKER_EXEC)
            sock = await engine.aio.exec_socket(container, command, tty=tty, stdin=True)
        except DockvisorError as exc:
            if isinstance(exc, EngineUnavailable):
                self.forget_endpoint(vm_id)
            await asyncio.to_thread(refused, exc)
            raise
        await asyncio.to_thread(self.ops.audit.append, who.name, action, obj, "accepted")
        async with self._waiting_stream(who, vm_id, P.DOCKER_EXEC, sock.close, caller):
            yield sock

    def stats(self, who: Principal, vm_id: str, container: str) -> dict[str, Any]:
        _check(_CONTAINER, container, "container name or id")
        with self._using(who, vm_id, P.DOCKER_VIEW) as engine:
            return engine.stats(container)

    def exec_run(self, who: Principal, vm_id: str, container: str, command: list[str], *,
                 env: dict[str, str] | None = None, workdir: str | None = None,
                 user: str | None = None) -> ExecResult:  # fmt: skip
        _check(_CONTAINER, container, "container name or id")
        if not command:
            raise InvalidInput("exec needs a command")
        with self._using(who, vm_id, P.DOCKER_EXEC, "docker.container.exec",
                         f"container:{container}") as engine:  # fmt: skip
            return engine.exec_run(container, command, env=env, workdir=workdir, user=user)

    def exec_socket(self, who: Principal, vm_id: str, container: str, command: list[str], *,
                    tty: bool = True) -> tuple[DockerEngine, ExecSocket]:  # fmt: skip
        """An interactive exec: the raw connection (and the engine, for resize and the
        exit code). Audited when it opens."""
        _check(_CONTAINER, container, "container name or id")
        if not command:
            raise InvalidInput("exec needs a command")
        with self._using(who, vm_id, P.DOCKER_EXEC, "docker.container.exec",
                         f"container:{container}") as engine:  # fmt: skip
            return engine, engine.exec_socket(container, command, tty=tty, stdin=True)

    # -- images ----------------------------------------------------------------------

    def images(self, who: Principal, vm_id: str) -> list[dict[str, Any]]:
        with self._using(who, vm_id, P.DOCKER_VIEW) as engine:
            return [
                {
                    "id": i.get("Id", ""),
                    "tags": i.get("RepoTags") or [],
                    "size": i.get("Size", 0),
                    "created": i.get("Created", 0),
                }
                for i in engine.images()
            ]

    def load_image(self, who: Principal, vm_id: str,
                   tarball: IO[bytes] | Iterable[bytes]) -> list[str]:  # fmt: skip
        """Load a `docker save` tarball; the images it held."""
        with self._using(who, vm_id, P.DOCKER_MANAGE, "docker.image.load") as engine:
            return engine.load_image(tarball)

    def import_image(self, who: Principal, vm_id: str, tarball: IO[bytes] | Iterable[bytes],
                     repository: str, tag: str = "latest") -> str:  # fmt: skip
        """Import a root filesystem tarball as REPOSITORY:TAG."""
        _check(_REPOSITORY, repository, "repository name (lowercase, as docker wants)")
        _check(_TAG, tag, "tag")
        with self._using(who, vm_id, P.DOCKER_MANAGE, "docker.image.import",
                         f"image:{repository}:{tag}") as engine:  # fmt: skip
            return engine.import_image(tarball, repository, tag)

    def remove_image(self, who: Principal, vm_id: str, image: str, *, force: bool = False) -> None:
        _check(_IMAGE, image, "image reference")
        with self._using(who, vm_id, P.DOCKER_MANAGE, "docker.image.remove",
                         f"image:{image}") as engine:  # fmt: skip
            engine.remove_image(image, force=force)

    # -- the engine gateway (the stock docker CLI) ------------------------------------

    def admit_now(
        self, who: Principal, vm_id: str, method: str, path: str, query: str = ""
    ) -> EngineAdmission | None:
        """`admit` if it can answer yes from memory (the same caller, VM and privilege a
        moment ago, the engine's address known); None when the database is needed."""
        request = classify(method, path, query)
        if not request.allowed:
            return None
        row = self._granted_recently((who.user_id, who.group_ids, vm_id, request.privileges))
        if row is None or row.state != "running":
            return None
        with self._lock:
            cached = self._endpoints.get(row.id)
        if cached is None or cached[0] != (row.host_id, row.name, row.updated):
            return None
        return EngineAdmission(self, who, row, request, cached[1])

    def admit(
        self, who: Principal, vm_id: str, method: str, path: str, query: str = ""
    ) -> EngineAdmission:
        """Check one raw Docker API request from the gateway; refused ones are audited
        here, admitted writes when the engine has answered."""
        request = classify(method, path, query)
        try:
            if not request.allowed:
                self.ops.vm_row(who, vm_id)  # an invisible VM stays invisible
                raise Unsupported(f"{method} {path[:100]} is not allowed through dockvisor: "
                                  f"{request.reason}")  # fmt: skip
            row = self._row(who, vm_id, request.privileges)
            endpoint = self._endpoint(row)
        except DockvisorError as exc:
            if request.mutating or not request.allowed:
                action = f"docker.{request.action}"[:64]
                self.ops.audit.append(
                    who.name, action, f"vm:{vm_id}"[:128], f"refused:{exc.code}", str(exc)
                )
            raise
        return EngineAdmission(self, who, row, request, endpoint)

    def audit_write(self, who: Principal, vm_id: str, request: EngineRequest, result: str) -> None:
        target = f"/{request.target}" if request.target else ""
        self.ops.audit.append(
            who.name, f"docker.{request.action}"[:64], f"vm:{vm_id}{target}"[:128], result
        )
