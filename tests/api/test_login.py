"""Logging in through the REST API: the throttle (per user and address, per address, a
slow-down for a user under attack) never keeps the right password out from an address
the user logged in from before; the client's address is the TCP peer unless the server
trusts a proxy, for the audit log and for the throttle.

Clients come from different loopback addresses (127.0.0.2, 127.0.0.3, ...: Linux routes
all of 127/8 to lo), so the server sees real, distinct peers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from dockvisor.services.runtime import ControlPlane, Settings
from tests.api.conftest import Server, assert_problem, serve

GOOD = "alice-password"


def client_from(server: Server, address: str) -> httpx.Client:
    """An anonymous client whose connections come from `address`."""
    return httpx.Client(
        base_url=f"{server.url}/api/v1",
        transport=httpx.HTTPTransport(local_address=address),
        timeout=30,
        trust_env=False,
    )


def log_in(
    server: Server, address: str, password: str, user: str = "alice", **headers: str
) -> httpx.Response:
    with client_from(server, address) as client:
        return client.post("/login", json={"name": user, "password": password}, headers=headers)


def logins(server: Server, user: str = "alice") -> list[tuple[str, str]]:
    """(result, detail) of the user's logins in the audit log, oldest first."""
    entries = server.client("admin").get("/audit", params={"limit": 1000}).json()
    return [
        (e["result"], e["detail"])
        for e in reversed(entries)
        if e["action"] == "login" and e["actor"] == user
    ]


def test_bad_passwords_from_one_address_never_lock_alice_out_of_her_known_address(
    sqlite_server: Server,
) -> None:
    srv = sqlite_server
    srv.add_user("alice", password=GOOD)
    assert log_in(srv, "127.0.0.2", GOOD).status_code == 200  # her usual address

    for _ in range(5):
        assert_problem(log_in(srv, "127.0.0.3", "guess"), 401, "unauthorized")
    throttled = log_in(srv, "127.0.0.3", GOOD)  # refused before the password is looked at
    assert_problem(throttled, 429, "throttled")
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert "dockvisor_session" not in throttled.cookies

    at_home = log_in(srv, "127.0.0.2", GOOD)
    assert at_home.status_code == 200, at_home.text
    assert at_home.json()["user"] == "alice" and at_home.cookies.get("dockvisor_session")
    # Not an attack on alice everywhere: a new address of hers gets in too.
    assert log_in(srv, "127.0.0.4", GOOD).status_code == 200

    seen = logins(srv)
    assert seen[0] == ("ok", "127.0.0.2")
    assert seen[1:6] == [("failed", "127.0.0.3")] * 5
    assert seen[6][0] == "throttled" and seen[6][1].startswith("127.0.0.3 (5 failures")
    assert seen[7:] == [("ok", "127.0.0.2"), ("ok", "127.0.0.4")]


def test_a_user_attacked_from_many_addresses_is_slowed_for_new_ones_only(
    sqlite_server: Server,
) -> None:
    srv = sqlite_server
    srv.add_user("alice", password=GOOD)
    assert log_in(srv, "127.0.0.2", GOOD).status_code == 200
    for n in range(20):  # one guess from each of 20 addresses: no pair or address limit
        assert_problem(log_in(srv, f"127.0.1.{n + 1}", "guess"), 401, "unauthorized")

    assert log_in(srv, "127.0.2.1", "guess").status_code == 401  # one new address a turn
    slowed = log_in(srv, "127.0.2.2", GOOD)
    assert_problem(slowed, 429, "throttled")
    assert int(slowed.headers["retry-after"]) in (1, 2)
    assert logins(srv)[-1][1].startswith("127.0.2.2 (user under attack")
    assert log_in(srv, "127.0.0.2", GOOD).status_code == 200  # her address: never


def test_an_address_trying_many_users_is_throttled_but_not_for_its_known_users(
    sqlite_server: Server,
) -> None:
    srv = sqlite_server
    srv.add_user("alice", password=GOOD)
    assert log_in(srv, "127.0.0.5", GOOD).status_code == 200
    for n in range(20):
        assert_problem(log_in(srv, "127.0.0.5", "guess", user=f"nobody{n}"), 401, "unauthorized")
    assert_problem(log_in(srv, "127.0.0.5", "guess", user="admin"), 429, "throttled")
    assert log_in(srv, "127.0.0.5", GOOD).status_code == 200
    assert log_in(srv, "127.0.0.6", "admin-password", user="admin").status_code == 200


# -- who the client is: forwarded headers -------------------------------------------------


@contextmanager
def server_trusting(tmp_path: Path, *proxies: str) -> Iterator[Server]:
    """A server whose Settings trust `proxies`, started the way `dockvisor serve` is."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'data' / 'dockvisor.db'}",
        trusted_proxies=proxies,
    )
    cp = ControlPlane(settings)
    uv, thread, url = serve(cp)
    srv = Server(cp, url)
    srv.add_user("admin", role="Admin")
    srv.add_user("alice", password=GOOD)
    try:
        yield srv
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()


def refused_write_addresses(server: Server, **headers: Any) -> list[str]:
    """Make an unauthenticated write and return the addresses its refusal was audited
    with."""
    with client_from(server, "127.0.0.1") as client:
        assert client.post("/vms", json={}, headers=headers).status_code == 401
    entries = server.client("admin").get("/audit", params={"limit": 1000}).json()
    return [e["object"] for e in entries if e["actor"] == "anonymous"]


def test_forwarded_headers_are_ignored_unless_the_peer_is_a_trusted_proxy(
    tmp_path: Path,
) -> None:
    forged = {"X-Forwarded-For": "203.0.113.9"}
    with server_trusting(tmp_path / "none") as srv:
        for n in range(5):  # each claims another address; all come from 127.0.0.1
            spoof = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            assert log_in(srv, "127.0.0.1", "guess", **spoof).status_code == 401
        assert_problem(log_in(srv, "127.0.0.1", GOOD, **forged), 429, "throttled")
        assert {detail.split(" ")[0] for _, detail in logins(srv)} == {"127.0.0.1"}
        assert refused_write_addresses(srv, **forged) == ["from:127.0.0.1"]

    with server_trusting(tmp_path / "proxy", "127.0.0.1") as srv:
        for _ in range(5):
            assert log_in(srv, "127.0.0.1", "guess", **forged).status_code == 401
        assert_problem(log_in(srv, "127.0.0.1", GOOD, **forged), 429, "throttled")
        other = log_in(srv, "127.0.0.1", GOOD, **{"X-Forwarded-For": "203.0.113.10"})
        assert other.status_code == 200, other.text
        seen = logins(srv)
        assert [detail.split(" ")[0] for _, detail in seen] == ["203.0.113.9"] * 6 + [
            "203.0.113.10"
        ]
        assert refused_write_addresses(srv, **forged) == ["from:203.0.113.9"]
        # A peer that is not the proxy cannot name an address.
        assert log_in(srv, "127.0.0.7", "guess", **forged).status_code == 401
        assert logins(srv)[-1] == ("failed", "127.0.0.7")
