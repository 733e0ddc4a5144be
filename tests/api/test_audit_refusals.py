"""Refused attempts to change something are in the audit log, with who and from where."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.api.conftest import Server, assert_problem


def test_unauthenticated_and_csrf_less_writes_are_audited(sqlite_server: Server) -> None:
    srv = sqlite_server
    anonymous = srv.client()
    assert (
        anonymous.post("/vms", json={"name": "x", "vcpus": 1, "memory": 2**29}).status_code == 401
    )
    srv.add_user("dev", password="dev-password")
    browser = srv.client()
    assert (
        browser.post("/login", json={"name": "dev", "password": "dev-password"}).status_code == 200
    )
    assert browser.post("/tokens", json={"name": "t"}).status_code == 403  # no X-CSRF-Token
    entries = srv.client("admin").get("/audit", params={"limit": 50}).json()
    refused = [(e["actor"], e["action"], e["result"]) for e in entries if e["actor"] == "anonymous"]
    assert ("anonymous", "POST /api/v1/vms", "refused:unauthorized") in refused
    assert ("anonymous", "POST /api/v1/tokens", "refused:forbidden") in refused
    assert any(e["action"] == "login" and e["result"] == "ok" for e in entries)
    assert srv.client("admin").get("/audit/verify").json()["ok"] is True


def test_csrf_tokens_are_compared_in_constant_time(
    sqlite_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header and the websocket's ?csrf= are checked with hmac.compare_digest (the
    server runs in this process, so the comparison can be watched)."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def watched(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", watched)
    srv = sqlite_server
    srv.add_user("dev", password="dev-password")
    browser = srv.client()
    login = browser.post("/login", json={"name": "dev", "password": "dev-password"})
    csrf = login.json()["csrf_token"]
    expected = csrf.encode()

    wrong = csrf[:-1] + ("A" if csrf[-1] != "A" else "B")
    refused = browser.post("/tokens", json={"name": "t"}, headers={"X-CSRF-Token": wrong})
    assert_problem(refused, 403, "forbidden")
    assert (wrong.encode(), expected) in compared
    odd = browser.post(
        "/tokens", json={"name": "t"}, headers={b"X-CSRF-Token": "\xfc".encode("latin-1")}
    )
    assert_problem(odd, 403, "forbidden")  # any bytes compare; none makes a 500
    accepted = browser.post("/tokens", json={"name": "t"}, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 201, accepted.text

    cookie = {"Cookie": f"dockvisor_session={browser.cookies['dockvisor_session']}"}
    ws_url = srv.url.replace("http://", "ws://") + "/api/v1/vms/none/docker/containers/c/exec"
    compared.clear()
    with connect(f"{ws_url}?csrf={wrong}", additional_headers=cookie) as ws:
        refusal = json.loads(ws.recv(timeout=10))
    assert refusal["code"] == "forbidden" and "?csrf=TOKEN" in refusal["error"], refusal
    assert (wrong.encode(), expected) in compared
    with connect(f"{ws_url}?csrf={csrf}", additional_headers=cookie) as ws:
        past_csrf = json.loads(ws.recv(timeout=10))
    assert "?csrf=TOKEN" not in past_csrf["error"], past_csrf
    assert (expected, expected) in compared
