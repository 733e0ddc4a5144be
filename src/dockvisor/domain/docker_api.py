"""Which privilege a Docker Engine API request needs on a VM, and how to audit it.

`classify(method, path)` reads one request as the docker CLI sends it (`/v1.41/...` or
unversioned, percent-encoded) and answers an `EngineRequest`: the privileges that admit
it (any one of them suffices; none: refused through dockvisor whatever one holds, with a
`reason`), a short audit verb (`container.start`), the object the path names (a
container, image, network, volume or exec id or name), whether it changes anything, and
whether the Docker Engine API defines a request body for it.

The table is an allow-list: an endpoint or a method it does not name is refused. The path
is percent-decoded before it is matched, as the engine decodes it before routing, so an
encoded slash cannot make the engine see another endpoint than the one classified; and a
path with empty, `.` or `..` segments is refused outright (the CLI never sends one).

Rules the table keeps, beyond "who may do what":

- A call at Docker.View or Docker.Operate never changes what a container is. So no
  request body where the Engine API defines none (`takes_body`; dockerd below API 1.24
  reads a HostConfig, privileged mode and binds included, from the body of
  `POST /containers/{id}/start`): the engine gateway, which alone sees a request's
  framing, refuses a body (Content-Length above 0, or any Transfer-Encoding) on such a
  route. No API version that reinterprets a call: versions below MIN_API_VERSION are
  refused (1.24 is the version that stopped `start` from taking a HostConfig, and the
  oldest that dockerd itself still accepts since Docker 25; the docker CLI negotiates
  the engine's own version, 1.41 here, so it never sends an older one unasked). And an
  Operate call takes only the query parameters it is documented with (`start` with a
  `checkpoint` or `checkpoint-dir` would restore a container from files in the VM).
- Reading files out of the engine (a container's: `archive`, `export`; an image's:
  `images/get`, which exports every layer, the same files a container of it would see)
  needs Docker.Exec or Docker.Manage, either one: both already let their holder read any
  file (a shell in the container, or a new container with the image), Docker.View does
  not (it sees names, states and output, not contents).
- A read that makes the engine contact a third party (`images/search` asks a registry
  the caller names) needs Docker.Manage, as pull and push do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from dockvisor.domain.privileges import Privilege

__all__ = ["MIN_API_VERSION", "TABLE", "EngineRequest", "Route", "classify"]

VIEW = Privilege.DOCKER_VIEW
OPERATE = Privilege.DOCKER_OPERATE
MANAGE = Privilege.DOCKER_MANAGE
EXEC = Privilege.DOCKER_EXEC
FILES = (EXEC, MANAGE)  # reading file contents: either one suffices

MIN_API_VERSION = (1, 24)


@dataclass(frozen=True)
class EngineRequest:
    """One Docker Engine API request, as dockvisor judges it."""

    privileges: tuple[Privilege, ...]  # any one admits it; () refused, see `reason`
    action: str  # audit verb: "container.create", "exec.start", "engine.ping"
    target: str | None  # the container, image, network, volume or exec the path names
    mutating: bool  # anything but a read
    reason: str = ""  # why it is refused, when no privilege admits it
    api_version: str | None = None  # "1.41" when the path carried /v1.41
    takes_body: bool = False  # the Engine API defines a request body for it

    @property
    def allowed(self) -> bool:
        """False when no privilege admits this request through dockvisor."""
        return bool(self.privileges)


@dataclass(frozen=True)
class Route:
    """One row of the table."""

    methods: tuple[str, ...]
    pattern: tuple[str, ...]
    needs: tuple[Privilege, ...]
    action: str
    body: bool  # the Engine API defines a request body
    query: frozenset[str] | None  # the only query parameters taken; None: any


def _r(
    methods: tuple[str, ...],
    pattern: str,
    needs: Privilege | tuple[Privilege, ...],
    action: str,
    *,
    body: bool = False,
    query: tuple[str, ...] | None = None,
) -> Route:
    return Route(
        methods,
        tuple(pattern.strip("/").split("/")),
        needs if isinstance(needs, tuple) else (needs,),
        action,
        body,
        None if query is None else frozenset(query),
    )


# One row per endpoint: methods, path pattern, the privileges that admit it (any one),
# action; `body` where the Engine API defines a request body, `query` where only some
# parameters are taken. In a pattern `{id}` is one path segment (the target) and
# `{name*}` one or more (an image name such as `registry:5000/team/app:1.0`); everything
# else is literal. First match wins, so the literal `/images/json` comes before
# `/images/{name*}`.
_READ = ("GET", "HEAD")
_POST = ("POST",)
TABLE: tuple[Route, ...] = (
    # The engine
    _r(_READ, "/_ping", VIEW, "engine.ping"),
    _r(_READ, "/version", VIEW, "engine.version"),
    _r(_READ, "/info", VIEW, "engine.info"),
    _r(_READ, "/events", VIEW, "engine.events"),
    _r(_READ, "/system/df", VIEW, "engine.df"),
    _r(_POST, "/auth", MANAGE, "engine.auth", body=True),
    # Containers
    _r(_READ, "/containers/json", VIEW, "container.list"),
    _r(_POST, "/containers/create", MANAGE, "container.create", body=True),
    _r(_POST, "/containers/prune", MANAGE, "container.prune"),
    _r(_READ, "/containers/{id}/json", VIEW, "container.inspect"),
    _r(_READ, "/containers/{id}/logs", VIEW, "container.logs"),
    _r(_READ, "/containers/{id}/top", VIEW, "container.top"),
    _r(_READ, "/containers/{id}/stats", VIEW, "container.stats"),
    _r(_READ, "/containers/{id}/changes", VIEW, "container.changes"),
    _r(_READ, "/containers/{id}/export", FILES, "container.export"),
    _r(_READ, "/containers/{id}/archive", FILES, "container.archive.get"),
    _r(("PUT",), "/containers/{id}/archive", MANAGE, "container.archive.put", body=True),
    _r(_POST, "/containers/{id}/wait", VIEW, "container.wait"),
    _r(_POST, "/containers/{id}/start", OPERATE, "container.start", query=("detachKeys",)),
    _r(_POST, "/containers/{id}/stop", OPERATE, "container.stop", query=("t", "signal")),
    _r(_POST, "/containers/{id}/restart", OPERATE, "container.restart", query=("t", "signal")),
    _r(_POST, "/containers/{id}/kill", OPERATE, "container.kill", query=("signal",)),
    _r(_POST, "/containers/{id}/pause", OPERATE, "container.pause", query=()),
    _r(_POST, "/containers/{id}/unpause", OPERATE, "container.unpause", query=()),
    _r(_POST, "/containers/{id}/rename", MANAGE, "container.rename"),
    _r(_POST, "/containers/{id}/update", MANAGE, "container.update", body=True),
    _r(("DELETE",), "/containers/{id}", MANAGE, "container.remove"),
    _r(_POST, "/containers/{id}/exec", EXEC, "exec.create", body=True),
    _r(_POST, "/containers/{id}/attach", EXEC, "container.attach"),
    _r(("GET",), "/containers/{id}/attach/ws", EXEC, "container.attach"),
    _r(_POST, "/containers/{id}/resize", EXEC, "container.resize"),
    _r(_POST, "/commit", MANAGE, "container.commit", body=True),
    # Exec instances
    _r(_POST, "/exec/{id}/start", EXEC, "exec.start", body=True),
    _r(_POST, "/exec/{id}/resize", EXEC, "exec.resize"),
    _r(_READ, "/exec/{id}/json", VIEW, "exec.inspect"),
    # Images
    _r(_READ, "/images/json", VIEW, "image.list"),
    _r(_READ, "/images/search", MANAGE, "image.search"),  # the engine asks a registry
    _r(_READ, "/images/get", FILES, "image.save"),
    _r(_POST, "/images/create", MANAGE, "image.pull", body=True),  # or image.import
    _r(_POST, "/images/load", MANAGE, "image.load", body=True),
    _r(_POST, "/images/prune", MANAGE, "image.prune"),
    _r(_READ, "/images/{name*}/json", VIEW, "image.inspect"),
    _r(_READ, "/images/{name*}/history", VIEW, "image.history"),
    _r(_READ, "/images/{name*}/get", FILES, "image.save"),
    _r(_POST, "/images/{name*}/tag", MANAGE, "image.tag"),
    _r(_POST, "/images/{name*}/push", MANAGE, "image.push"),
    _r(("DELETE",), "/images/{name*}", MANAGE, "image.remove"),
    _r(_POST, "/build", MANAGE, "image.build", body=True),
    _r(_POST, "/build/prune", MANAGE, "build.prune"),
    # Networks
    _r(_READ, "/networks", VIEW, "network.list"),
    _r(_POST, "/networks/create", MANAGE, "network.create", body=True),
    _r(_POST, "/networks/prune", MANAGE, "network.prune"),
    _r(_READ, "/networks/{id}", VIEW, "network.inspect"),
    _r(("DELETE",), "/networks/{id}", MANAGE, "network.remove"),
    _r(_POST, "/networks/{id}/connect", MANAGE, "network.connect", body=True),
    _r(_POST, "/networks/{id}/disconnect", MANAGE, "network.disconnect", body=True),
    # Volumes
    _r(_READ, "/volumes", VIEW, "volume.list"),
    _r(_POST, "/volumes/create", MANAGE, "volume.create", body=True),
    _r(_POST, "/volumes/prune", MANAGE, "volume.prune"),
    _r(_READ, "/volumes/{id}", VIEW, "volume.inspect"),
    _r(("DELETE",), "/volumes/{id}", MANAGE, "volume.remove"),
)

# Whole areas of the API that dockvisor does not pass through, by first path segment.
_REFUSED_AREAS = {
    "swarm": "swarm and cluster endpoints are not available through dockvisor",
    "nodes": "swarm and cluster endpoints are not available through dockvisor",
    "services": "swarm and cluster endpoints are not available through dockvisor",
    "tasks": "swarm and cluster endpoints are not available through dockvisor",
    "secrets": "swarm and cluster endpoints are not available through dockvisor",
    "configs": "swarm and cluster endpoints are not available through dockvisor",
    "plugins": "engine plugins are not available through dockvisor",
    "session": "BuildKit sessions are not available through dockvisor "
    "(build with DOCKER_BUILDKIT=0)",
    "grpc": "BuildKit gRPC is not available through dockvisor (build with DOCKER_BUILDKIT=0)",
    "distribution": "registry distribution lookups are not available through dockvisor",
}

_VERSION = re.compile(r"/v([0-9][0-9.]*)(?=/|$)")


def _match(pattern: tuple[str, ...], segments: list[str]) -> str | None | bool:
    """The target the pattern binds (None if it binds none), or False if no match."""
    if "{name*}" in pattern:
        i = pattern.index("{name*}")
        head, tail = pattern[:i], pattern[i + 1 :]
        if len(segments) < len(head) + len(tail) + 1:
            return False
        if tuple(segments[: len(head)]) != head:
            return False
        if tail and tuple(segments[-len(tail) :]) != tail:
            return False
        return "/".join(segments[len(head) : len(segments) - len(tail)])
    if len(pattern) != len(segments):
        return False
    target: str | None = None
    for want, got in zip(pattern, segments, strict=True):
        if want == "{id}":
            target = got
        elif want != got:
            return False
    return target


def _refused(method: str, action: str, reason: str, version: str | None) -> EngineRequest:
    return EngineRequest(
        privileges=(),
        action=action,
        target=None,
        mutating=method not in _READ,
        reason=reason,
        api_version=version,
    )


def _query_target(action: str, query: str) -> tuple[str, str | None]:
    """Refine the action and name the target from the query where the path names none."""
    params = parse_qs(query)

    def first(key: str) -> str | None:
        values = params.get(key)
        return values[0] if values else None

    if action == "container.create":
        return action, first("name")
    if action == "container.commit":
        return action, first("container")
    if action == "image.pull":
        if first("fromSrc") is not None:
            return "image.import", first("repo")
        image, tag = first("fromImage"), first("tag")
        return action, (f"{image}:{tag}" if image and tag and "@" not in image else image)
    if action == "image.build":
        return action, first("t")
    return action, None


def _version(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def classify(method: str, path: str, query: str = "") -> EngineRequest:
    """Judge one Docker Engine API request.

    `path` is the request path as the docker CLI sends it, with or without a `/vX.Y`
    prefix; a `?query` on it is split off. `query` names the target of requests whose
    path names none (`POST /containers/create?name=web`), and is checked against the
    parameters an Operate call takes.
    """
    method = method.upper()
    if "?" in path:
        path, _, inline_query = path.partition("?")
        query = query or inline_query
    version: str | None = None
    found = _VERSION.match(path)
    if found:
        version, path = found.group(1), path[found.end() :]
        number = _version(version)
        if number is None or number < MIN_API_VERSION:
            oldest = ".".join(map(str, MIN_API_VERSION))
            return _refused(
                method,
                "engine.refused",
                f"API version {version} is not available through dockvisor: the oldest is "
                f"{oldest} (older versions let some calls change a container, e.g. start "
                "with a HostConfig); let the docker CLI negotiate, or set "
                f"DOCKER_API_VERSION={oldest} or newer",
                version,
            )
    decoded = unquote(path)
    if not decoded.startswith("/") or any(ord(c) < 0x20 or c == "\x7f" for c in decoded):
        return _refused(method, "engine.refused", f"malformed path {path!r}", version)
    segments = decoded[1:].split("/")
    if any(s in ("", ".", "..") for s in segments):
        return _refused(method, "engine.refused", f"malformed path {path!r}", version)
    area = segments[0]
    if area in _REFUSED_AREAS:
        return _refused(method, f"{area}.refused", _REFUSED_AREAS[area], version)

    path_matched = False
    for route in TABLE:
        target = _match(route.pattern, segments)
        if target is False:
            continue
        path_matched = True
        if method not in route.methods:
            continue
        if route.query is not None:
            unknown = sorted(set(parse_qs(query, keep_blank_values=True)) - route.query)
            if unknown:
                taken = ", ".join(sorted(route.query)) or "none"
                return _refused(
                    method,
                    route.action,
                    f"{method} {decoded} does not take the parameter {unknown[0]!r} "
                    f"through dockvisor (it takes: {taken})",
                    version,
                )
        action = route.action
        bound = target if isinstance(target, str) else None
        if bound is None:
            action, bound = _query_target(action, query)
        return EngineRequest(
            privileges=route.needs,
            action=action,
            target=bound,
            mutating=method not in _READ and route.needs != (VIEW,),
            api_version=version,
            takes_body=route.body,
        )
    if path_matched:
        reason = f"{method} {decoded} is not available through dockvisor"
    else:
        reason = f"{decoded} is not a Docker Engine API endpoint dockvisor passes through"
    return _refused(method, "engine.refused", reason, version)
