"""Which privilege a Docker Engine API request needs on a VM, and how to audit it.

`classify(method, path)` reads one request as the docker CLI sends it (`/v1.41/...` or
unversioned, percent-encoded) and answers an `EngineRequest`: the privilege it needs
(None: refused through dockvisor whatever one holds, with a `reason`), a short audit verb
(`container.start`), the object the path names (a container, image, network, volume or
exec id or name) and whether it changes anything.

The table is an allow-list: an endpoint or a method it does not name is refused. The path
is percent-decoded before it is matched, as the engine decodes it before routing, so an
encoded slash cannot make the engine see another endpoint than the one classified; and a
path with empty, `.` or `..` segments is refused outright (the CLI never sends one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from dockvisor.domain.privileges import Privilege

__all__ = ["EngineRequest", "classify"]

VIEW = Privilege.DOCKER_VIEW
OPERATE = Privilege.DOCKER_OPERATE
MANAGE = Privilege.DOCKER_MANAGE
EXEC = Privilege.DOCKER_EXEC


@dataclass(frozen=True)
class EngineRequest:
    """One Docker Engine API request, as dockvisor judges it."""

    privilege: Privilege | None  # None: refused through dockvisor, see `reason`
    action: str  # audit verb: "container.create", "exec.start", "engine.ping"
    target: str | None  # the container, image, network, volume or exec the path names
    mutating: bool  # anything but a read
    reason: str = ""  # why it is refused, when privilege is None
    api_version: str | None = None  # "1.41" when the path carried /v1.41

    @property
    def allowed(self) -> bool:
        """False when no privilege admits this request through dockvisor."""
        return self.privilege is not None


# One row per endpoint: methods, path pattern, privilege, action. In a pattern `{id}` is
# one path segment (the target) and `{name*}` one or more (an image name such as
# `registry:5000/team/app:1.0`); everything else is literal. First match wins, so the
# literal `/images/json` comes before `/images/{name*}`.
_READ = ("GET", "HEAD")
_ROUTES: tuple[tuple[tuple[str, ...], str, Privilege, str], ...] = (
    # The engine
    (_READ, "/_ping", VIEW, "engine.ping"),
    (_READ, "/version", VIEW, "engine.version"),
    (_READ, "/info", VIEW, "engine.info"),
    (_READ, "/events", VIEW, "engine.events"),
    (_READ, "/system/df", VIEW, "engine.df"),
    (("POST",), "/auth", MANAGE, "engine.auth"),
    # Containers
    (_READ, "/containers/json", VIEW, "container.list"),
    (("POST",), "/containers/create", MANAGE, "container.create"),
    (("POST",), "/containers/prune", MANAGE, "container.prune"),
    (_READ, "/containers/{id}/json", VIEW, "container.inspect"),
    (_READ, "/containers/{id}/logs", VIEW, "container.logs"),
    (_READ, "/containers/{id}/top", VIEW, "container.top"),
    (_READ, "/containers/{id}/stats", VIEW, "container.stats"),
    (_READ, "/containers/{id}/changes", VIEW, "container.changes"),
    (_READ, "/containers/{id}/export", VIEW, "container.export"),
    (_READ, "/containers/{id}/archive", VIEW, "container.archive.get"),
    (("PUT",), "/containers/{id}/archive", MANAGE, "container.archive.put"),
    (("POST",), "/containers/{id}/wait", VIEW, "container.wait"),
    (("POST",), "/containers/{id}/start", OPERATE, "container.start"),
    (("POST",), "/containers/{id}/stop", OPERATE, "container.stop"),
    (("POST",), "/containers/{id}/restart", OPERATE, "container.restart"),
    (("POST",), "/containers/{id}/kill", OPERATE, "container.kill"),
    (("POST",), "/containers/{id}/pause", OPERATE, "container.pause"),
    (("POST",), "/containers/{id}/unpause", OPERATE, "container.unpause"),
    (("POST",), "/containers/{id}/rename", MANAGE, "container.rename"),
    (("POST",), "/containers/{id}/update", MANAGE, "container.update"),
    (("DELETE",), "/containers/{id}", MANAGE, "container.remove"),
    (("POST",), "/containers/{id}/exec", EXEC, "exec.create"),
    (("POST",), "/containers/{id}/attach", EXEC, "container.attach"),
    (("GET",), "/containers/{id}/attach/ws", EXEC, "container.attach"),
    (("POST",), "/containers/{id}/resize", EXEC, "container.resize"),
    (("POST",), "/commit", MANAGE, "container.commit"),
    # Exec instances
    (("POST",), "/exec/{id}/start", EXEC, "exec.start"),
    (("POST",), "/exec/{id}/resize", EXEC, "exec.resize"),
    (_READ, "/exec/{id}/json", VIEW, "exec.inspect"),
    # Images
    (_READ, "/images/json", VIEW, "image.list"),
    (_READ, "/images/search", VIEW, "image.search"),
    (_READ, "/images/get", VIEW, "image.save"),
    (("POST",), "/images/create", MANAGE, "image.pull"),  # or image.import, see below
    (("POST",), "/images/load", MANAGE, "image.load"),
    (("POST",), "/images/prune", MANAGE, "image.prune"),
    (_READ, "/images/{name*}/json", VIEW, "image.inspect"),
    (_READ, "/images/{name*}/history", VIEW, "image.history"),
    (_READ, "/images/{name*}/get", VIEW, "image.save"),
    (("POST",), "/images/{name*}/tag", MANAGE, "image.tag"),
    (("POST",), "/images/{name*}/push", MANAGE, "image.push"),
    (("DELETE",), "/images/{name*}", MANAGE, "image.remove"),
    (("POST",), "/build", MANAGE, "image.build"),
    (("POST",), "/build/prune", MANAGE, "build.prune"),
    # Networks
    (_READ, "/networks", VIEW, "network.list"),
    (("POST",), "/networks/create", MANAGE, "network.create"),
    (("POST",), "/networks/prune", MANAGE, "network.prune"),
    (_READ, "/networks/{id}", VIEW, "network.inspect"),
    (("DELETE",), "/networks/{id}", MANAGE, "network.remove"),
    (("POST",), "/networks/{id}/connect", MANAGE, "network.connect"),
    (("POST",), "/networks/{id}/disconnect", MANAGE, "network.disconnect"),
    # Volumes
    (_READ, "/volumes", VIEW, "volume.list"),
    (("POST",), "/volumes/create", MANAGE, "volume.create"),
    (("POST",), "/volumes/prune", MANAGE, "volume.prune"),
    (_READ, "/volumes/{id}", VIEW, "volume.inspect"),
    (("DELETE",), "/volumes/{id}", MANAGE, "volume.remove"),
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
_Pattern = tuple[str, ...]


def _compile(pattern: str) -> _Pattern:
    return tuple(pattern.strip("/").split("/"))


_TABLE = tuple((methods, _compile(p), priv, action) for methods, p, priv, action in _ROUTES)


def _match(pattern: _Pattern, segments: list[str]) -> str | None | bool:
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
        privilege=None,
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


def classify(method: str, path: str, query: str = "") -> EngineRequest:
    """Judge one Docker Engine API request.

    `path` is the request path as the docker CLI sends it, with or without a `/vX.Y`
    prefix; a `?query` on it is split off. `query`, when given, only names the target
    of requests whose path names none (`POST /containers/create?name=web`).
    """
    method = method.upper()
    if "?" in path:
        path, _, inline_query = path.partition("?")
        query = query or inline_query
    version: str | None = None
    found = _VERSION.match(path)
    if found:
        version, path = found.group(1), path[found.end() :]
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
    for methods, pattern, privilege, action in _TABLE:
        target = _match(pattern, segments)
        if target is False:
            continue
        path_matched = True
        if method not in methods:
            continue
        bound = target if isinstance(target, str) else None
        if bound is None:
            action, bound = _query_target(action, query)
        return EngineRequest(
            privilege=privilege,
            action=action,
            target=bound,
            mutating=privilege is not VIEW,
            api_version=version,
        )
    if path_matched:
        reason = f"{method} {decoded} is not available through dockvisor"
    else:
        reason = f"{decoded} is not a Docker Engine API endpoint dockvisor passes through"
    return _refused(method, "engine.refused", reason, version)
