"""How the engine gateway reads a request's framing, on raw sockets: one framing only
(RFC 9112, 6.3), and no body where the Docker Engine API defines none."""

from __future__ import annotations

import socket

import pytest
from tests.raw_http import answers
from tests.unit.engine_fakes import (
    TOKEN,
    Client,
    FakeEngine,
    FakePolicy,
    client,
    engine,
    gateway,
    pki,
    policy,
    wait_for,
)

from dockvisor.api.engine_gateway import EngineGateway
from dockvisor.domain.docker_api import TABLE
from dockvisor.domain.privileges import Privilege

pytestmark = pytest.mark.timeout(30)
FIXTURES = (client, engine, gateway, pki, policy)  # used by name below

AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


def _raw(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send raw bytes; (everything the gateway answered, whether it closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = bytearray()
        sock.settimeout(2)
        try:
            while data := sock.recv(65536):
                answer += data
        except TimeoutError:
            return bytes(answer), False
        return bytes(answer), True


def test_a_request_with_both_framings_is_refused_and_its_connection_closed(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy
) -> None:
    # Read by Content-Length, the body is "0\r\n\r" and "\nGET ..." smuggles a request;
    # read as chunked, it ends at "0\r\n\r\n". The gateway must not pick one and pass on.
    smuggled = b"GET /vms/dev/v1.41/containers/json HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
    request = (
        b"POST /vms/dev/v1.41/containers/create HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Type: application/json\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled
    )  # fmt: skip
    answer, closed = _raw(gateway.port, request)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"both Transfer-Encoding and Content-Length" in answer
    assert answer.count(b"HTTP/1.1") == 1 and closed  # nothing else answered: closed
    assert engine.seen == [] and policy.calls == []


@pytest.mark.parametrize("chunked", [False, True])
def test_what_is_forwarded_carries_one_framing(
    client: Client, engine: FakeEngine, chunked: bool
) -> None:
    body = b"x" * 1000
    if chunked:
        client.sock.sendall(
            b"POST /vms/dev/v1.41/images/load HTTP/1.1\r\nHost: x\r\n" + AUTH
            + b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + body + b"\r\n0\r\n\r\n"
        )  # fmt: skip
        reply = client.rest(client.head())
    else:
        reply = client.request("POST", "/vms/dev/v1.41/images/load", body=body)
    assert reply.json()["bytes"] == 1000  # type: ignore[index]
    [seen] = engine.seen
    if chunked:
        assert seen.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in seen.headers
    else:
        assert seen.headers["content-length"] == "1000"
        assert "transfer-encoding" not in seen.headers


def _no_body_routes() -> list[tuple[str, str]]:
    """(method, path) of every View and Operate route of the table: none takes a body."""
    names = {"{id}": "web", "{name*}": "busybox:latest"}
    out = []
    for route in TABLE:
        if not set(route.needs) <= {Privilege.DOCKER_VIEW, Privilege.DOCKER_OPERATE}:
            continue
        assert not route.body, route
        path = "/v1.41/" + "/".join(names.get(p, p) for p in route.pattern)
        out += [(method, path) for method in route.methods]
    return out


NO_BODY = _no_body_routes()


def _answers(port: int, raw: bytes, methods: list[str]) -> list[tuple[int, bytes]]:
    return answers(("127.0.0.1", port), raw, methods)


@pytest.mark.parametrize(("method", "path"), NO_BODY, ids=[f"{m} {p}" for m, p in NO_BODY])
def test_a_view_or_operate_call_with_a_body_is_refused(
    gateway: EngineGateway, engine: FakeEngine, policy: FakePolicy, method: str, path: str
) -> None:
    host_config = b'{"Binds":["/:/host"],"Privileged":true,"PidMode":"host","NetworkMode":"host"}'
    head = f"{method} /vms/dev{path} HTTP/1.1\r\nHost: x\r\n".encode() + AUTH
    framings = [
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(host_config)
        + host_config,
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(host_config)
        + host_config
        + b"\r\n0\r\n\r\n",
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # even an empty chunked body
    ]
    ping = b"GET /vms/dev/_ping HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
    for framing in framings:
        (status, said), (after, _) = _answers(gateway.port, head + framing + ping,
                                              [method, "GET"])  # fmt: skip
        assert status == 400
        assert method == "HEAD" or b"carries a request body" in said
        assert after == 200  # the connection stays usable: the ping is answered
    assert [s.target for s in engine.seen] == ["/_ping"] * len(framings)
    assert all(c.path == "/_ping" for c in policy.calls)
    # The same call without a body, or with an empty one, goes on to the policy.
    for framing in (b"\r\n", b"Content-Length: 0\r\n\r\n"):
        before = len(policy.calls)  # counted before sending: a fast admission counts
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
            sock.sendall(head + framing)
            wait_for(lambda before=before: len(policy.calls) > before)  # type: ignore[misc]
    assert [c.path for c in policy.calls if c.path != "/_ping"] == [path, path]
