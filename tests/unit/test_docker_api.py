"""The privilege each Docker Engine API request needs through dockvisor, row by row."""

from __future__ import annotations

import pytest

from dockvisor.domain.docker_api import MIN_API_VERSION, TABLE, EngineRequest, classify
from dockvisor.domain.privileges import Privilege

VIEW, OPERATE, MANAGE, EXEC = (
    Privilege.DOCKER_VIEW,
    Privilege.DOCKER_OPERATE,
    Privilege.DOCKER_MANAGE,
    Privilege.DOCKER_EXEC,
)
FILES = (EXEC, MANAGE)  # either one

# method, path (unversioned, as the table reads), privilege(s), action, target
ADMITTED: list[tuple[str, str, Privilege | tuple[Privilege, ...], str, str | None]] = [
    # the engine
    ("HEAD", "/_ping", VIEW, "engine.ping", None),
    ("GET", "/_ping", VIEW, "engine.ping", None),
    ("GET", "/version", VIEW, "engine.version", None),
    ("GET", "/info", VIEW, "engine.info", None),
    ("GET", "/events", VIEW, "engine.events", None),
    ("GET", "/system/df", VIEW, "engine.df", None),
    ("POST", "/auth", MANAGE, "engine.auth", None),
    # container reads
    ("GET", "/containers/json", VIEW, "container.list", None),
    ("GET", "/containers/web/json", VIEW, "container.inspect", "web"),
    ("GET", "/containers/web/logs", VIEW, "container.logs", "web"),
    ("GET", "/containers/web/top", VIEW, "container.top", "web"),
    ("GET", "/containers/web/stats", VIEW, "container.stats", "web"),
    ("GET", "/containers/web/changes", VIEW, "container.changes", "web"),
    ("GET", "/containers/web/export", FILES, "container.export", "web"),
    ("GET", "/containers/web/archive", FILES, "container.archive.get", "web"),
    ("HEAD", "/containers/web/archive", FILES, "container.archive.get", "web"),
    ("POST", "/containers/web/wait", VIEW, "container.wait", "web"),
    # container power
    ("POST", "/containers/web/start", OPERATE, "container.start", "web"),
    ("POST", "/containers/web/stop", OPERATE, "container.stop", "web"),
    ("POST", "/containers/web/restart", OPERATE, "container.restart", "web"),
    ("POST", "/containers/web/pause", OPERATE, "container.pause", "web"),
    ("POST", "/containers/web/unpause", OPERATE, "container.unpause", "web"),
    ("POST", "/containers/web/kill", OPERATE, "container.kill", "web"),
    # container management
    ("POST", "/containers/create", MANAGE, "container.create", None),
    ("DELETE", "/containers/web", MANAGE, "container.remove", "web"),
    ("POST", "/containers/web/rename", MANAGE, "container.rename", "web"),
    ("POST", "/containers/web/update", MANAGE, "container.update", "web"),
    ("POST", "/containers/prune", MANAGE, "container.prune", None),
    ("POST", "/commit", MANAGE, "container.commit", None),
    ("PUT", "/containers/web/archive", MANAGE, "container.archive.put", "web"),
    # exec and attach
    ("POST", "/containers/web/exec", EXEC, "exec.create", "web"),
    ("POST", "/exec/3f2a/start", EXEC, "exec.start", "3f2a"),
    ("POST", "/exec/3f2a/resize", EXEC, "exec.resize", "3f2a"),
    ("GET", "/exec/3f2a/json", VIEW, "exec.inspect", "3f2a"),
    ("POST", "/containers/web/attach", EXEC, "container.attach", "web"),
    ("GET", "/containers/web/attach/ws", EXEC, "container.attach", "web"),
    ("POST", "/containers/web/resize", EXEC, "container.resize", "web"),
    # images
    ("GET", "/images/json", VIEW, "image.list", None),
    ("GET", "/images/busybox/json", VIEW, "image.inspect", "busybox"),
    ("GET", "/images/busybox/history", VIEW, "image.history", "busybox"),
    ("GET", "/images/search", MANAGE, "image.search", None),
    ("GET", "/images/get", FILES, "image.save", None),
    ("GET", "/images/busybox/get", FILES, "image.save", "busybox"),
    ("POST", "/images/create", MANAGE, "image.pull", None),
    ("POST", "/images/load", MANAGE, "image.load", None),
    ("POST", "/images/prune", MANAGE, "image.prune", None),
    ("POST", "/images/busybox/tag", MANAGE, "image.tag", "busybox"),
    ("POST", "/images/busybox/push", MANAGE, "image.push", "busybox"),
    ("DELETE", "/images/busybox", MANAGE, "image.remove", "busybox"),
    ("POST", "/build", MANAGE, "image.build", None),
    ("POST", "/build/prune", MANAGE, "build.prune", None),
    # networks and volumes
    ("GET", "/networks", VIEW, "network.list", None),
    ("GET", "/networks/backend", VIEW, "network.inspect", "backend"),
    ("POST", "/networks/create", MANAGE, "network.create", None),
    ("DELETE", "/networks/backend", MANAGE, "network.remove", "backend"),
    ("POST", "/networks/backend/connect", MANAGE, "network.connect", "backend"),
    ("POST", "/networks/backend/disconnect", MANAGE, "network.disconnect", "backend"),
    ("POST", "/networks/prune", MANAGE, "network.prune", None),
    ("GET", "/volumes", VIEW, "volume.list", None),
    ("GET", "/volumes/data", VIEW, "volume.inspect", "data"),
    ("POST", "/volumes/create", MANAGE, "volume.create", None),
    ("DELETE", "/volumes/data", MANAGE, "volume.remove", "data"),
    ("POST", "/volumes/prune", MANAGE, "volume.prune", None),
]


# Where the Docker Engine API defines a request body (v1.41).
WITH_BODY = {
    ("POST", "/auth"),
    ("POST", "/containers/create"),
    ("PUT", "/containers/web/archive"),
    ("POST", "/containers/web/update"),
    ("POST", "/containers/web/exec"),
    ("POST", "/commit"),
    ("POST", "/exec/3f2a/start"),
    ("POST", "/images/create"),
    ("POST", "/images/load"),
    ("POST", "/build"),
    ("POST", "/networks/create"),
    ("POST", "/networks/backend/connect"),
    ("POST", "/networks/backend/disconnect"),
    ("POST", "/volumes/create"),
}


@pytest.mark.parametrize("prefix", ["", "/v1.41", "/v1.24"])
@pytest.mark.parametrize(("method", "path", "privilege", "action", "target"), ADMITTED)
def test_every_endpoint_needs_its_privilege(
    prefix: str,
    method: str,
    path: str,
    privilege: Privilege | tuple[Privilege, ...],
    action: str,
    target: str | None,
) -> None:
    request = classify(method, prefix + path)
    needs = privilege if isinstance(privilege, tuple) else (privilege,)
    assert request == EngineRequest(
        privileges=needs,
        action=action,
        target=target,
        mutating=method not in ("GET", "HEAD") and needs != (VIEW,),
        api_version=prefix[2:] or None,
        takes_body=(method, path) in WITH_BODY,
    )
    assert request.allowed and request.reason == ""


def test_the_table_is_all_covered_here() -> None:
    """Every row of the table has its line above: a new row needs a decision here."""
    rows = {(m, route.action, route.needs) for route in TABLE for m in route.methods[:1]}
    listed = {(m, a, p if isinstance(p, tuple) else (p,)) for m, _, p, a, _ in ADMITTED}
    assert rows <= listed


def test_reading_files_needs_exec_or_manage_and_search_needs_manage() -> None:
    for path in ("/containers/web/archive?path=/etc/shadow", "/containers/web/export",
                 "/images/get?names=busybox", "/images/busybox/get"):  # fmt: skip
        request = classify("GET", "/v1.41" + path)
        assert set(request.privileges) == {EXEC, MANAGE} and VIEW not in request.privileges
    assert classify("HEAD", "/v1.41/containers/web/archive?path=/").privileges == FILES
    assert classify("GET", "/v1.41/images/search?term=10.0.0.1:5000/x").privileges == (MANAGE,)


@pytest.mark.parametrize("version", ["1.12", "1.23", "1.2", "0.9", "1"])
def test_api_versions_below_the_minimum_are_refused(version: str) -> None:
    request = classify("POST", f"/v{version}/containers/web/start")
    assert not request.allowed and request.mutating
    assert f"API version {version} is not available" in request.reason
    assert "1.24" in request.reason and request.api_version == version
    assert not classify("GET", f"/v{version}/containers/json").allowed


@pytest.mark.parametrize("version", ["1.24", "1.25", "1.41", "1.50", "2.0"])
def test_the_minimum_and_newer_versions_pass(version: str) -> None:
    assert MIN_API_VERSION == (1, 24)
    assert classify("POST", f"/v{version}/containers/web/start").privileges == (OPERATE,)


def test_a_malformed_version_is_refused() -> None:
    assert not classify("GET", "/v1..41/containers/json").allowed
    assert not classify("GET", "/v1.41./containers/json").allowed


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/containers/web/start", True),
        ("/containers/web/start?detachKeys=ctrl-x", True),
        ("/containers/web/start?checkpoint=c1", False),
        ("/containers/web/start?checkpoint-dir=/tmp", False),
        ("/containers/web/stop?t=3", True),
        ("/containers/web/stop?t=3&signal=SIGINT", True),
        ("/containers/web/restart?t=1", True),
        ("/containers/web/kill?signal=KILL", True),
        ("/containers/web/kill?signal=KILL&x=1", False),
        ("/containers/web/pause", True),
        ("/containers/web/pause?x", False),
        ("/containers/web/unpause?foo=bar", False),
    ],
)
def test_operate_calls_take_only_their_parameters(path: str, allowed: bool) -> None:
    request = classify("POST", "/v1.41" + path)
    assert request.allowed is allowed
    if not allowed:
        assert "does not take the parameter" in request.reason and request.mutating


def test_no_view_or_operate_route_takes_a_body() -> None:
    for route in TABLE:
        if set(route.needs) <= {VIEW, OPERATE}:
            assert not route.body, route


def test_reads_do_not_mutate_and_everything_else_does() -> None:
    assert not classify("POST", "/v1.41/containers/web/wait").mutating
    assert not classify("GET", "/v1.41/containers/web/archive").mutating
    assert classify("PUT", "/v1.41/containers/web/archive").mutating
    assert classify("POST", "/v1.41/exec/1/resize").mutating
    assert not classify("GET", "/v1.41/containers/web/export").mutating


@pytest.mark.parametrize(
    ("method", "path", "target", "action"),
    [
        ("GET", "/images/library/busybox:latest/json", "library/busybox:latest", "image.inspect"),
        ("GET", "/images/registry:5000/a/b/json", "registry:5000/a/b", "image.inspect"),
        ("GET", "/images/registry:5000/a/b:1.0/history", "registry:5000/a/b:1.0", "image.history"),
        ("DELETE", "/images/a/b:tag", "a/b:tag", "image.remove"),
        ("DELETE", "/images/sha256:0123abcd", "sha256:0123abcd", "image.remove"),
        ("POST", "/images/registry:5000/team/app/push", "registry:5000/team/app", "image.push"),
        ("POST", "/images/team/app:1/tag", "team/app:1", "image.tag"),
        # an image may be called like a verb: the trailing verb decides
        ("GET", "/images/json/json", "json", "image.inspect"),
        ("GET", "/images/search/json", "search", "image.inspect"),
        ("GET", "/images/a/history/json", "a/history", "image.inspect"),
        ("DELETE", "/images/json", "json", "image.remove"),
        # percent-encoded, as the CLI may send it
        (
            "GET",
            "/images/library%2Fbusybox%3Alatest/json",
            "library/busybox:latest",
            "image.inspect",
        ),
        ("DELETE", "/images/my%20img", "my img", "image.remove"),
        ("GET", "/containers/my%2Dweb/json", "my-web", "container.inspect"),
    ],
)
def test_names_are_read_whole_and_decoded(method: str, path: str, target: str, action: str) -> None:
    for prefix in ("", "/v1.41"):
        request = classify(method, prefix + path)
        assert (request.action, request.target) == (action, target)
        assert request.allowed


@pytest.mark.parametrize(
    ("path", "action", "target"),
    [
        ("/containers/create?name=web", "container.create", "web"),
        ("/images/create?fromImage=busybox&tag=latest", "image.pull", "busybox:latest"),
        ("/images/create?fromImage=busybox%40sha256%3Aab&tag=x", "image.pull", "busybox@sha256:ab"),
        ("/images/create?fromSrc=-&repo=imported", "image.import", "imported"),
        ("/commit?container=web&repo=snap", "container.commit", "web"),
        ("/build?t=app%3A1", "image.build", "app:1"),
    ],
)
def test_the_query_names_what_the_path_does_not(path: str, action: str, target: str) -> None:
    inline = classify("POST", "/v1.41" + path)
    separate = classify("POST", "/v1.41" + path.partition("?")[0], path.partition("?")[2])
    assert (inline.action, inline.target) == (separate.action, separate.target) == (action, target)
    assert inline.privileges == (MANAGE,)


@pytest.mark.parametrize(
    ("method", "path", "reason"),
    [
        ("GET", "/swarm", "swarm"),
        ("POST", "/swarm/init", "swarm"),
        ("GET", "/nodes", "swarm"),
        ("POST", "/services/create", "swarm"),
        ("GET", "/tasks", "swarm"),
        ("POST", "/secrets/create", "swarm"),
        ("GET", "/configs", "swarm"),
        ("GET", "/plugins", "plugins"),
        ("POST", "/plugins/pull", "plugins"),
        ("POST", "/session", "BuildKit"),
        ("POST", "/grpc", "BuildKit"),
        ("GET", "/distribution/busybox/json", "distribution"),
        # unknown paths
        ("GET", "/", "malformed"),
        ("GET", "/containers", "not a Docker Engine API endpoint"),
        ("GET", "/containers/web/secret-door", "not a Docker Engine API endpoint"),
        ("POST", "/exec/1/kill", "not a Docker Engine API endpoint"),
        ("GET", "/images/busybox", "not available"),
        # known paths, other methods
        ("DELETE", "/containers/json", None),  # removes a container called "json": admitted
        ("POST", "/containers/web/json", "not available"),
        ("PUT", "/containers/web/start", "not available"),
        ("GET", "/containers/web/start", "not available"),
        ("GET", "/containers/create", "not available"),
        ("PATCH", "/images/json", "not available"),
        ("DELETE", "/exec/1/json", "not available"),
        ("GET", "/containers/web/exec", "not available"),
        ("OPTIONS", "/_ping", "not available"),
        ("PUT", "/volumes/data", "not available"),
        # paths that could be routed otherwise than they read
        ("GET", "/containers/web/../../images/json", "malformed"),
        ("POST", "/containers/./web/start", "malformed"),
        ("GET", "//containers/json", "malformed"),
        ("GET", "/containers/json/", "malformed"),
        ("POST", "/containers/a%2Fkill/wait", "not a Docker Engine API endpoint"),
        ("POST", "/containers/web%2F..%2F..%2Fbuild/start", "malformed"),
        ("GET", "/containers/web%00/json", "malformed"),
    ],
)
def test_anything_else_is_refused_with_a_reason(method: str, path: str, reason: str | None) -> None:
    for prefix in ("", "/v1.41"):
        request = classify(method, prefix + path)
        if reason is None:
            assert request.privileges == (MANAGE,)
            continue
        assert request.privileges == () and not request.allowed
        assert reason in request.reason
        assert request.target is None
        assert request.mutating == (method not in ("GET", "HEAD"))


def test_swarm_refusal_names_the_area() -> None:
    request = classify("POST", "/v1.41/swarm/join")
    assert request.action == "swarm.refused"
    assert "not available through dockvisor" in request.reason


def test_the_version_prefix_is_only_a_prefix() -> None:
    assert not classify("GET", "/v1.41").allowed
    assert not classify("GET", "/v1.41/v1.41/containers/json").allowed
    assert not classify("GET", "/vx/containers/json").allowed
    assert classify("GET", "/v1/containers/json").api_version == "1"
    assert classify("get", "/v1.41/containers/json").privileges == (VIEW,)  # any method case
