"""Where the CLI's VM commands go: straight to a hypervisor, or through a dockvisor server.

`LocalBackend` calls the services with a hypervisor driver (the CLI as admin on the
host). `RemoteBackend` speaks the REST API with an API token, so the server checks the
user's privileges, quotas and locks, and audits; long operations are followed through
their task. Both return the same records, so the CLI prints them alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import httpx

from dockvisor import errors
from dockvisor.cli.credentials import docker_config_dir
from dockvisor.cli.docker_backends import (
    DockerBackend,
    DockerEnvironment,
    LocalDocker,
    RemoteDocker,
)
from dockvisor.domain.model import (
    VM,
    DockerEndpoint,
    PowerState,
    ResizeResult,
    Snapshot,
    Spare,
    Template,
    TemplateOrigin,
    TemplateSizes,
)
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services import warm as warm_service
from dockvisor.services.engines import EngineAccess

__all__ = ["ApiClient", "Backend", "LocalBackend", "RemoteBackend"]


class Backend(Protocol):
    def list_vms(self) -> list[VM]: ...
    def get_vm(self, name: str) -> VM: ...
    def create_vm(
        self,
        *,
        name: str,
        template: str,
        vcpus: int | None,
        memory: int | None,
        max_vcpus: int | None,
        max_memory: int | None,
        disk: int | None,
        full: bool,
        start: bool,
        resource_set: int | None,
        host: int | None,
        progress: Progress,
        cold: bool = False,
    ) -> VM: ...
    def power(
        self, name: str, action: str, *, wait: bool, timeout: float, progress: Progress
    ) -> VM: ...
    def delete_vm(self, name: str, *, force: bool) -> None: ...
    def resize(
        self, name: str, *, vcpus: int | None, memory: int | None, disk: int | None
    ) -> ResizeResult: ...
    def snapshot(self, name: str, snapshot: str, description: str) -> Snapshot: ...
    def snapshots(self, name: str) -> list[Snapshot]: ...
    def revert(self, name: str, snapshot: str, progress: Progress) -> VM: ...
    def delete_snapshot(self, name: str, snapshot: str) -> None: ...
    def clone(
        self, name: str, new_name: str, *, full: bool, start: bool, progress: Progress
    ) -> VM: ...
    def endpoint(self, name: str) -> DockerEndpoint: ...
    def docker(self, name: str) -> DockerBackend: ...
    def docker_environment(self, name: str) -> DockerEnvironment: ...
    def docker_host(self, name: str) -> str: ...
    def templates(self) -> list[Template]: ...
    def warm_template(self, name: str, spares: int, *, host: int | None,
                      progress: Progress) -> list[Spare]: ...  # fmt: skip
    def spares(self) -> list[Spare]: ...


class LocalBackend:
    def __init__(self, driver: HypervisorDriver, engines: EngineAccess) -> None:
        self.driver = driver
        self.engines = engines

    def list_vms(self) -> list[VM]:
        return vm_service.list_vms(self.driver)

    def get_vm(self, name: str) -> VM:
        return vm_service.get_vm(self.driver, name)

    def create_vm(
        self,
        *,
        name: str,
        template: str,
        vcpus: int | None,
        memory: int | None,
        max_vcpus: int | None,
        max_memory: int | None,
        disk: int | None,
        full: bool,
        start: bool,
        resource_set: int | None,
        host: int | None,
        progress: Progress,
        cold: bool = False,
    ) -> VM:
        if resource_set is not None:
            raise errors.InvalidInput("--resource-set needs --server (quotas live in the server)")
        if host is not None:
            raise errors.InvalidInput("--host needs --server (without it: --hypervisor URI)")
        return vm_service.create_vm_from_template(
            self.driver,
            name=name,
            template=template,
            vcpus=vcpus,
            memory=memory,
            max_vcpus=max_vcpus,
            max_memory=max_memory,
            disk=disk,
            full=full,
            start=start,
            progress=progress,
            engines=self.engines,
            cold=cold,
        )

    def power(
        self, name: str, action: str, *, wait: bool, timeout: float, progress: Progress
    ) -> VM:
        if action == "start":
            return vm_service.start_vm(
                self.driver, name, wait=wait, progress=progress, engines=self.engines
            )
        if action == "stop":
            return vm_service.stop_vm(self.driver, name, timeout=timeout)
        if action == "kill":
            return vm_service.kill_vm(self.driver, name)
        return vm_service.reboot_vm(
            self.driver, name, wait=wait, progress=progress, engines=self.engines
        )

    def delete_vm(self, name: str, *, force: bool) -> None:
        vm_service.delete_vm(self.driver, name, force=force)

    def resize(
        self, name: str, *, vcpus: int | None, memory: int | None, disk: int | None
    ) -> ResizeResult:
        return vm_service.resize_vm(self.driver, name, vcpus=vcpus, memory=memory, disk=disk)

    def snapshot(self, name: str, snapshot: str, description: str) -> Snapshot:
        return vm_service.snapshot_vm(self.driver, name, snapshot, description=description)

    def snapshots(self, name: str) -> list[Snapshot]:
        return vm_service.list_snapshots(self.driver, name)

    def revert(self, name: str, snapshot: str, progress: Progress) -> VM:
        return vm_service.revert_to_snapshot(
            self.driver, name, snapshot, progress=progress, engines=self.engines
        )

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        vm_service.delete_snapshot(self.driver, name, snapshot)

    def clone(self, name: str, new_name: str, *, full: bool, start: bool, progress: Progress) -> VM:
        return vm_service.clone_vm(
            self.driver,
            name,
            new_name,
            full=full,
            start=start,
            progress=progress,
            engines=self.engines,
        )

    def endpoint(self, name: str) -> DockerEndpoint:
        return vm_service.docker_endpoint(self.driver, name)

    def docker(self, name: str) -> DockerBackend:
        return LocalDocker(self.engines.engine(self.endpoint(name)))

    def docker_host(self, name: str) -> str:
        raise self._no_direct_docker_cli(name)

    def docker_environment(self, name: str) -> DockerEnvironment:
        raise self._no_direct_docker_cli(name)

    def _no_direct_docker_cli(self, name: str) -> errors.Unsupported:
        """The stock docker CLI is never pointed straight at an engine's host port: it
        checks the name of the address it dials (127.0.0.1), and an engine's certificate
        names only its own VM (engines/pki.py), so either the check fails or, with a
        certificate that named 127.0.0.1, it would accept whichever VM answers on that
        port. The engine gateway checks the VM's own name: the CLI goes through it."""
        self.endpoint(name)  # a VM that does not exist, or has no engine, says so first
        return errors.Unsupported(
            f"the docker CLI cannot check which VM answers on a host port (VM {name}'s "
            "engine certificate names only that VM): go through dockvisor's engine "
            "gateway, which checks it. Run `dockvisor serve`, then `dockvisor --server "
            f'http://127.0.0.1:8080 login` and eval "$(dockvisor --server '
            f'http://127.0.0.1:8080 vm endpoint {name})"; or use `dockvisor docker {name} '
            "...` here"
        )

    def warm_template(self, name: str, spares: int, *, host: int | None,
                      progress: Progress) -> list[Spare]:  # fmt: skip
        if host is not None:
            raise errors.InvalidInput("--host needs --server (without it: --hypervisor URI)")
        return warm_service.warm_template(self.driver, name, spares, progress=progress,
                                          engines=self.engines)  # fmt: skip

    def spares(self) -> list[Spare]:
        return warm_service.spares_of(self.driver)

    def templates(self) -> list[Template]:
        return template_service.list_templates(self.driver)


_BY_CODE: dict[str, type[errors.DockvisorError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidInput,
        errors.NotFound,
        errors.AlreadyExists,
        errors.BadPowerState,
        errors.Unsupported,
        errors.OutOfCapacity,
        errors.HypervisorUnreachable,
        errors.HypervisorError,
        errors.GuestTimeout,
        errors.Unauthorized,
        errors.Forbidden,
        errors.Busy,
        errors.EngineUnavailable,
    )
}


def _raise_problem(response: httpx.Response) -> None:
    """The API's problem+json answer as the dockvisor error of its code."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail, code = body.get("detail", response.text), body.get("code", "")
    except ValueError:
        detail, code = response.text, ""
    cls = _BY_CODE.get(code, errors.DockvisorError)
    if response.status_code == 429:
        cls = errors.Throttled
    raise cls(f"{detail} (HTTP {response.status_code})")


class ApiClient:
    """The REST API with a token; problems come back as dockvisor errors."""

    def __init__(self, server: str, token: str | None, *, timeout: float = 60.0) -> None:
        self.server = server.rstrip("/")
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.server}/api/v1", headers=headers, timeout=timeout, trust_env=False
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.HypervisorUnreachable(
                f"cannot reach the dockvisor server at {self.server}: {exc}"
            ) from None
        _raise_problem(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it comes (logs -f)."""
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_problem(response)
                yield response
        except httpx.HTTPError as exc:
            raise errors.HypervisorUnreachable(
                f"lost the dockvisor server at {self.server}: {exc}"
            ) from None

    def follow(self, task: dict[str, Any], progress: Progress = no_progress) -> dict[str, Any]:
        """Wait for a task, feeding its progress; its result, or its error raised."""
        while task["state"] in ("pending", "running"):
            progress(task["step"] or task["state"], task["progress"])
            time.sleep(0.5)
            task = self.request("GET", f"/tasks/{task['id']}/wait", params={"timeout": 2})
        if task["state"] == "failed":
            cls = _BY_CODE.get(task.get("error_code") or "", errors.DockvisorError)
            raise cls(task["error"])
        if task.get("step"):
            progress(task["step"], 1.0)  # its last word (a create: warm or cold, and why)
        progress("done", 1.0)
        return dict(task.get("result") or {})


def _vm(data: dict[str, Any]) -> VM:
    try:
        state = PowerState(data["state"])
    except ValueError:
        state = PowerState.UNKNOWN
    return VM(
        name=data["name"],
        uuid=data["id"],
        power_state=state,
        vcpus=data["vcpus"],
        max_vcpus=data["max_vcpus"],
        memory=data["memory"],
        max_memory=data["max_memory"],
        template=data["template"],
        disk_mode=None,
        disk_size=data["disk"],
        docker_ready=data["docker_ready"],
        snapshot_count=data["snapshots"],
        managed=data["managed"],
    )


class RemoteBackend:
    def __init__(self, client: ApiClient) -> None:
        self.api = client

    def _id(self, name: str) -> str:
        matches = [
            v for v in self.api.request("GET", "/vms") if v["name"] == name or v["id"] == name
        ]
        if not matches:
            raise errors.NotFound(f"no VM named {name!r} on {self.api.server}")
        if len(matches) > 1:
            ids = ", ".join(f"{m['id']} (host {m['host_id']})" for m in matches)
            raise errors.InvalidInput(f"several VMs are named {name!r}: use an id: {ids}")
        return str(matches[0]["id"])

    def list_vms(self) -> list[VM]:
        return [_vm(v) for v in self.api.request("GET", "/vms")]

    def get_vm(self, name: str) -> VM:
        return _vm(self.api.request("GET", f"/vms/{self._id(name)}"))

    def _by_id(self, vm_id: str) -> VM:
        return _vm(self.api.request("GET", f"/vms/{vm_id}"))

    def create_vm(
        self,
        *,
        name: str,
        template: str,
        vcpus: int | None,
        memory: int | None,
        max_vcpus: int | None,
        max_memory: int | None,
        disk: int | None,
        full: bool,
        start: bool,
        resource_set: int | None,
        host: int | None,
        progress: Progress,
        cold: bool = False,
    ) -> VM:
        task = self.api.request(
            "POST",
            "/vms",
            json={
                "name": name,
                "template": template,
                "vcpus": vcpus,
                "memory": memory,
                "max_vcpus": max_vcpus,
                "max_memory": max_memory,
                "disk": disk,
                "full": full,
                "start": start,
                "cold": cold,
                "resource_set_id": resource_set,
                "host_id": host,
            },
        )
        self.api.follow(task, progress)
        return self._by_id(task["object_id"])

    def power(
        self, name: str, action: str, *, wait: bool, timeout: float, progress: Progress
    ) -> VM:
        vm_id = self._id(name)
        task = self.api.request("PUT", f"/vms/{vm_id}/state", json={"action": action})
        self.api.follow(task, progress)
        return self._by_id(vm_id)

    def delete_vm(self, name: str, *, force: bool) -> None:
        vm = self.get_vm(name)
        if vm.power_state is not PowerState.STOPPED and not force:
            raise errors.BadPowerState(
                f"VM {name!r} is {vm.power_state}; stop it first or delete it with --force"
            )
        task = self.api.request("DELETE", f"/vms/{vm.uuid}", params={"force": "true"})
        self.api.follow(task)

    def resize(
        self, name: str, *, vcpus: int | None, memory: int | None, disk: int | None
    ) -> ResizeResult:
        vm_id = self._id(name)
        body = {"vcpus": vcpus, "memory": memory, "disk": disk}
        task = self.api.request("PATCH", f"/vms/{vm_id}", json=body)
        result = self.api.follow(task)
        return ResizeResult(
            vm=self._by_id(vm_id),
            applied=result.get("applied", {}),
            pending=result.get("pending", {}),
            reasons=result.get("reasons", []),
        )

    def snapshot(self, name: str, snapshot: str, description: str) -> Snapshot:
        vm_id = self._id(name)
        task = self.api.request(
            "POST", f"/vms/{vm_id}/snapshots", json={"name": snapshot, "description": description}
        )
        self.api.follow(task)
        return next(s for s in self.snapshots(name) if s.name == snapshot)

    def snapshots(self, name: str) -> list[Snapshot]:
        from datetime import datetime

        vm_id = self._id(name)
        return [
            Snapshot(
                name=s["name"],
                vm=name,
                created=datetime.fromisoformat(s["created"]),
                power_state=PowerState(s["power_state"]),
                with_memory=s["with_memory"],
                description=s["description"],
                parent=s["parent"],
                current=s["current"],
                disk_size=s.get("disk_size"),
            )
            for s in self.api.request("GET", f"/vms/{vm_id}/snapshots")
        ]

    def revert(self, name: str, snapshot: str, progress: Progress) -> VM:
        vm_id = self._id(name)
        task = self.api.request("POST", f"/vms/{vm_id}/snapshots/{snapshot}/revert")
        self.api.follow(task, progress)
        return self._by_id(vm_id)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        vm_id = self._id(name)
        self.api.follow(self.api.request("DELETE", f"/vms/{vm_id}/snapshots/{snapshot}"))

    def clone(self, name: str, new_name: str, *, full: bool, start: bool, progress: Progress) -> VM:
        vm_id = self._id(name)
        task = self.api.request(
            "POST", f"/vms/{vm_id}/clone", json={"name": new_name, "full": full, "start": start}
        )
        self.api.follow(task, progress)
        return self._by_id(task["object_id"])

    def endpoint(self, name: str) -> DockerEndpoint:
        data = self.api.request("GET", f"/vms/{self._id(name)}/endpoint")
        return DockerEndpoint(data["host"], data["port"], data["tls"])

    def docker(self, name: str) -> DockerBackend:
        return RemoteDocker(self.api, self._id(name), self.api.token or "")

    def docker_host(self, name: str) -> str:
        """DOCKER_HOST on the gateway (without writing a docker config: see
        docker_environment)."""
        data = self.api.request("GET", f"/vms/{self._id(name)}/docker/environment")
        return str(data["docker_host"])

    def docker_environment(self, name: str) -> DockerEnvironment:
        """DOCKER_HOST on the server's engine gateway, and a docker config directory whose
        config.json makes the docker CLI send this token with every request."""
        data = self.api.request("GET", f"/vms/{self._id(name)}/docker/environment")
        directory = docker_config_dir(self.api.server, self.api.token or "")
        return DockerEnvironment(
            {"DOCKER_HOST": data["docker_host"], "DOCKER_CONFIG": str(directory)},
            ["DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"],
        )

    def warm_template(self, name: str, spares: int, *, host: int | None,
                      progress: Progress) -> list[Spare]:  # fmt: skip
        task = self.api.request("POST", f"/templates/{name}/warm",
                                json={"spares": spares, "host_id": host})  # fmt: skip
        self.api.follow(task, progress)
        return [s for s in self.spares() if s.template == name]

    def spares(self) -> list[Spare]:
        def spare(row: dict[str, Any]) -> Spare:
            fields = {k: v for k, v in row.items() if k != "host_id"}
            created = row["created"]
            return Spare(**{**fields, "created": datetime.fromisoformat(created) if created
                            else None})  # fmt: skip

        return [spare(r) for r in self.api.request("GET", "/spares")]

    def templates(self) -> list[Template]:
        return [
            Template(
                name=t["name"],
                description=t["description"],
                disk_size=t["disk_size"],
                docker_ready=t["docker_ready"],
                builtin=t["builtin"],
                boots_kernel=False,
                sizes=TemplateSizes(**t["sizes"]),
                origin=TemplateOrigin(**t["origin"]) if t.get("origin") else None,
                spares_kept=t.get("spares_kept", 0),
            )
            for t in self.api.request("GET", "/templates")
        ]
