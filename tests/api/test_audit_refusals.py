"""Refused attempts to change something are in the audit log, with who and from where."""

from __future__ import annotations

from tests.api.conftest import Server


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
