"""The Docker tab of a VM's page: its containers (live), a form to run one, start /
stop / restart / remove, a container's page with its logs (followed) and an exec
terminal, and the VM's images (load, import, remove).

Each action declares the requirement of the API route that does the same thing; each
button appears only to those who meet it (Docker.Operate, .Manage, .Exec).
The logs and the terminal are the API's own stream and websocket, opened by the page.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse

from dockvisor.api.docker_routes import needs
from dockvisor.api.params import Key, Who
from dockvisor.domain.container_spec import ContainerSpec, PortBinding
from dockvisor.domain.sizes import parse_size
from dockvisor.errors import DockvisorError, InvalidInput, Unsupported
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import chain_of, vm_data
from dockvisor.services.runtime import ControlPlane
from dockvisor.web.forms import status_for
from dockvisor.web.routing import Actions, Requirements, WebRoute, render

__all__ = ["docker_page_router", "parse_env", "parse_ports"]

DOCKER_VIEW = needs("Docker.View")  # as the API's Docker routes declare it
RESTART = ("no", "always", "unless-stopped", "on-failure")


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines (blank lines ignored)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or " " in key.strip():
            raise InvalidInput(f"{line.strip()!r} is not KEY=VALUE")
        env[key.strip()] = value
    return env


def parse_ports(text: str) -> list[PortBinding]:
    """Lines or commas of HOST:CONTAINER[/udp] (the host port on all the VM's
    addresses, as `docker run -p`)."""
    ports = []
    for item in text.replace(",", "\n").split():
        mapping, _, protocol = item.partition("/")
        host, sep, container = mapping.partition(":")
        if not sep or not host.isdigit() or not container.isdigit() or protocol not in (
            "", "tcp", "udp",
        ):  # fmt: skip
            raise InvalidInput(f"{item!r} is not HOST:CONTAINER[/tcp|/udp] (e.g. 8080:80)")
        if not (0 < int(host) < 65536 and 0 < int(container) < 65536):
            raise InvalidInput(f"{item!r}: ports are from 1 to 65535")
        ports.append(PortBinding(int(host), int(container), protocol or "tcp"))
    return ports


def docker_page_router(cp: ControlPlane, requirements: Requirements) -> APIRouter:
    web = APIRouter(route_class=WebRoute, include_in_schema=False)
    docker = cp.docker

    def context(who: Principal, vm_id: str) -> dict[str, Any]:
        row = cp.ops.vm_row(who, vm_id)
        can = Actions(requirements, cp.access.privileges(who, chain_of(row)))
        return {"vm": vm_data(row), "can": can}

    def containers(who: Principal, vm_id: str) -> dict[str, Any]:
        """The list's content: the containers, or why the engine does not answer and
        whether that may pass (a stopped VM, an engine not up yet: the list asks again)
        or not (a VM without Docker)."""
        try:
            found = docker.list_containers(who, vm_id)
            return {"containers": found, "engine_error": "", "engine_retry": False}
        except DockvisorError as exc:
            passing = not isinstance(exc, Unsupported)
            return {"containers": [], "engine_error": str(exc), "engine_retry": passing}

    @web.get("/vms/{vm_id}/docker", openapi_extra=DOCKER_VIEW)
    def docker_tab(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        listing = containers(who, vm_id)
        try:
            images = docker.images(who, vm_id)
        except DockvisorError:
            images = []
        return render(request, "docker.html", **listing, images=images,
                      values={"restart": "no"}, errors={}, **context(who, vm_id))  # fmt: skip

    @web.get("/ui/vms/{vm_id}/containers", openapi_extra=DOCKER_VIEW)
    def container_rows(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        return render(request, "container_rows.html", **containers(who, vm_id),
                      **context(who, vm_id))  # fmt: skip

    @web.post("/ui/vms/{vm_id}/containers", openapi_extra=requirements.same_as(
        "docker.container.create"))  # fmt: skip
    def run_container(
        who: Who,
        request: Request,
        vm_id: Key,
        image: Annotated[str, Form(max_length=255)] = "",
        name: Annotated[str, Form(max_length=128)] = "",
        command: Annotated[str, Form(max_length=4096)] = "",
        env: Annotated[str, Form(max_length=16384)] = "",
        ports: Annotated[str, Form(max_length=2048)] = "",
        restart: Annotated[str, Form(max_length=16)] = "no",
        cpus: Annotated[str, Form(max_length=16)] = "",
        memory: Annotated[str, Form(max_length=32)] = "",
    ) -> HTMLResponse:
        values = {"image": image, "name": name, "command": command, "env": env,
                  "ports": ports, "restart": restart, "cpus": cpus, "memory": memory}  # fmt: skip
        errors: dict[str, str] = {}
        spec_args: dict[str, Any] = {}
        if not image.strip():
            errors["image"] = "name an image (for example busybox:latest)"
        checks = (
            ("command", lambda: shlex.split(command) or None),
            ("env", lambda: parse_env(env)),
            ("ports", lambda: parse_ports(ports)),
            ("cpus", lambda: _cpus(cpus)),
            ("memory", lambda: parse_size(memory, what="memory") if memory.strip() else None),
        )
        for field, parse in checks:
            try:
                spec_args[field] = parse()
            except (InvalidInput, ValueError) as exc:
                errors[field] = str(exc)
        if restart not in RESTART:
            errors["restart"] = f"restart policy is one of {', '.join(RESTART)}"
        answer = {"values": values, **context(who, vm_id)}
        if errors:
            return render(request, "container_form.html", status=422, errors=errors, **answer)
        spec = ContainerSpec(
            image=image.strip(), name=name.strip() or None, restart_policy=restart, **spec_args
        )
        try:
            started = docker.run(who, vm_id, spec)
        except DockvisorError as exc:
            field = "name" if "name" in str(exc).lower() and name else "form"
            return render(request, "container_form.html", status=status_for(exc),
                          errors={field: str(exc)}, **answer)  # fmt: skip
        return render(request, "container_form.html", errors={}, started=started,
                      headers={"HX-Trigger": "containers-changed"},
                      **{**answer, "values": {"restart": "no"}})  # fmt: skip

    @web.post(
        "/ui/vms/{vm_id}/containers/{container}/{action}",
        openapi_extra=requirements.same_as("docker.container.{action}"),
    )
    def act(who: Who, request: Request, vm_id: Key, container: Key, action: Key) -> HTMLResponse:
        if action not in ("start", "stop", "restart"):
            raise InvalidInput(f"no container action {action!r} here (start, stop, restart)")
        docker.act(who, vm_id, container, action)
        return container_rows(who, request, vm_id)

    @web.delete(
        "/ui/vms/{vm_id}/containers/{container}",
        openapi_extra=requirements.same_as("docker.container.remove"),
    )
    def remove(who: Who, request: Request, vm_id: Key, container: Key) -> HTMLResponse:
        docker.remove(who, vm_id, container, force=True)
        return container_rows(who, request, vm_id)

    @web.get("/vms/{vm_id}/docker/{container}", openapi_extra=DOCKER_VIEW)
    def container_page(who: Who, request: Request, vm_id: Key, container: Key) -> HTMLResponse:
        info = docker.inspect(who, vm_id, container)
        return render(request, "container.html", info=info,
                      name=str(info.get("Name", container)).lstrip("/"),
                      **context(who, vm_id))  # fmt: skip

    @web.delete(
        "/ui/vms/{vm_id}/images/{image}",
        openapi_extra=requirements.same_as("docker.image.remove"),
    )
    def remove_image(who: Who, request: Request, vm_id: Key, image: Key) -> HTMLResponse:
        docker.remove_image(who, vm_id, image, force=False)
        return render(request, "image_rows.html", images=docker.images(who, vm_id),
                      **context(who, vm_id))  # fmt: skip

    @web.get("/ui/vms/{vm_id}/images", openapi_extra=DOCKER_VIEW)
    def image_rows(who: Who, request: Request, vm_id: Key) -> HTMLResponse:
        return render(request, "image_rows.html", images=docker.images(who, vm_id),
                      **context(who, vm_id))  # fmt: skip

    return web


def _cpus(text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"CPUs is a number such as 0.5 or 2, not {text!r}") from None
    if not 0 < value <= 1024:
        raise InvalidInput("CPUs is more than 0 and at most 1024")
    return value
