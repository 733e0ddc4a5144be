"""VM consoles through the API on a real Docker-ready VM (qemu:///system): a ticket, then a
websocket carrying the serial port (a root shell in the guest) or the screen (RFB).

One real server and one running VM for the module (plus a stopped one, never booted).
Users: `dev` (Developer on the VM), `operator` (Operator on it: VM.Console too), `viewer`
(Viewer: no VM.Console), `outsider` (nothing), `admin` (Admin on /).
"""

from __future__ import annotations

import os
import secrets
import select
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from dockvisor.domain.sizes import MiB
from dockvisor.services import identity
from dockvisor.services.consoles import TICKET_LIFETIME
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import AclEntryRow
from tests.real_server import real_server, succeeded

pytestmark = pytest.mark.vm

DOCKVISOR = str(Path(sys.executable).with_name("dockvisor"))

ROLES = {"dev": "Developer", "operator": "Operator", "viewer": "Viewer", "outsider": None}


@dataclass
class Stack:
    cp: ControlPlane
    url: str
    vm_id: str
    vm_name: str
    stopped_id: str
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=60,
            trust_env=False,
        )

    def ticket(self, user: str, kind: str, vm_id: str | None = None) -> dict[str, Any]:
        with self.client(user) as c:
            response = c.post(f"/vms/{vm_id or self.vm_id}/console-tickets", json={"kind": kind})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def ws_url(self, path: str) -> str:
        return "ws" + self.url.removeprefix("http") + path

    def open(self, user: str | None, url: str, **kwargs: Any) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        headers.update(kwargs.pop("headers", {}))
        return connect(self.ws_url(url), additional_headers=headers, open_timeout=30, **kwargs)

    def audit(self, action: str = "vm.console") -> list[dict[str, Any]]:
        """Audit entries with this action, newest first."""
        with self.client("admin") as c:
            entries = c.get("/audit", params={"limit": 1000}).json()
        return [e for e in entries if e["action"] == action]


def _users(cp: ControlPlane) -> dict[str, str]:
    tokens = {}
    with cp.db.session() as session:
        for user in ("admin", *ROLES):
            row = identity.create_user(session, user, f"{user}-password-1")
            if user == "admin":
                session.add(AclEntryRow(subject_kind="user", subject_id=row.id, path="/",
                                        role="Admin", propagate=True))  # fmt: skip
            _, tokens[user] = identity.create_token(session, row, "tests")
    cp.access.invalidate()
    return tokens


@pytest.fixture(scope="module")
def stack(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with real_server(tmp_path_factory, "console-server") as server:
        cp, url = server.cp, server.url
        tokens = _users(cp)
        admin = httpx.Client(base_url=f"{url}/api/v1", timeout=60, trust_env=False,
                             headers={"Authorization": f"Bearer {tokens['admin']}"})  # fmt: skip
        name = f"{run_prefix}cons-{secrets.token_hex(2)}"
        stopped = f"{run_prefix}cons-{secrets.token_hex(2)}"
        server.vms += [name, stopped]
        body = {"template": "docker-ready", "vcpus": 1, "memory": 512 * MiB}
        first = admin.post("/vms", json={**body, "name": name}).json()
        second = admin.post("/vms", json={**body, "name": stopped, "start": False}).json()
        vm_id = succeeded(admin, first)["object_id"]
        stopped_id = succeeded(admin, second)["object_id"]
        for user, role in ROLES.items():
            if role:
                entry = {"subject": f"user:{user}", "path": f"/vms/{vm_id}", "role": role}
                assert admin.post("/acl", json=entry).status_code == 201
        admin.close()
        yield Stack(cp, url, vm_id, name, stopped_id, tokens)


def read_until(ws: ClientConnection, wanted: bytes, timeout: float = 30) -> bytes:
    """What the console sends until `wanted` appears in it."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{wanted!r} not seen; got {seen[-500:]!r}"
        with suppress(TimeoutError):
            data = ws.recv(timeout=remaining)
            assert isinstance(data, bytes), data  # binary frames only
            seen += data
    return seen


def closed_with(ws: ClientConnection, timeout: float = 10) -> tuple[int, str]:
    """The close code and reason the server ended the websocket with."""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ws.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as closed:
        assert closed.rcvd is not None, "the server closed without a close frame"
        return closed.rcvd.code, closed.rcvd.reason
    raise AssertionError(f"the websocket was still open after {timeout} s")


def refused_with(stack: Stack, user: str | None, url: str, **kwargs: Any) -> tuple[int, str]:
    with stack.open(user, url, **kwargs) as ws:
        return closed_with(ws)


def audited(stack: Stack, result: str, actor: str, since: int) -> dict[str, Any]:
    """The console's audit entry with `result` by `actor`, written after entry `since`."""
    for entry in stack.audit():
        if entry["id"] > since and entry["result"] == result and entry["actor"] == actor:
            assert entry["object"] == f"vm:{stack.vm_id}"
            return entry
    raise AssertionError(f"no vm.console {result} by {actor} in the audit log")


def last_audit_id(stack: Stack) -> int:
    with stack.client("admin") as c:
        entries = c.get("/audit", params={"limit": 1}).json()
    return int(entries[0]["id"]) if entries else 0


# -- the consoles -----------------------------------------------------------------------


def test_the_serial_console_is_a_root_shell_in_the_guest(stack: Stack) -> None:
    since = last_audit_id(stack)
    issued = stack.ticket("dev", "serial")
    assert issued["url"] == f"/api/v1/vms/{stack.vm_id}/console/serial?ticket={issued['ticket']}"
    assert len(issued["ticket"]) >= 43 and issued["expires"]
    with stack.open("dev", issued["url"]) as ws:
        ws.send(b"echo dv-$((6*7)) uid=$(id -u) on $(hostname)\n")
        # The typed line comes back as `dv-$((6*7))`; only the shell's answer says dv-42.
        seen = read_until(ws, f"dv-42 uid=0 on {stack.vm_name}".encode())
        assert b"echo dv-$((6*7))" in seen
        ws.send("echo text-$((1+1))\n")  # a text frame goes in as its UTF-8 bytes
        read_until(ws, b"text-2")
    assert audited(stack, "opened", "dev", since)["detail"] == "serial"
    closed = wait_for(lambda: audited_or_none(stack, "closed", "dev", since), 5, "the close")
    assert closed["detail"].startswith("serial")


def test_closing_the_websocket_releases_the_serial_console_within_a_second(stack: Stack) -> None:
    with stack.open("dev", stack.ticket("dev", "serial")["url"]) as ws:
        ws.send(b"echo held\n")
        read_until(ws, b"held\r\n")
        assert console_is_held(stack.vm_name)
    closed_at = time.monotonic()
    wait_for(lambda: not console_is_held(stack.vm_name), 1.0, "the console's release")
    assert time.monotonic() - closed_at <= 1.0


def test_the_graphical_console_speaks_rfb_up_to_server_init(stack: Stack) -> None:
    since = last_audit_id(stack)
    issued = stack.ticket("operator", "vnc")
    assert issued["url"].startswith(f"/api/v1/vms/{stack.vm_id}/console/vnc?ticket=")
    with stack.open("operator", issued["url"], subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"  # noVNC asks for it
        rfb = RfbReader(ws)
        version = rfb.read(12)
        assert version.startswith(b"RFB 003.00") and version.endswith(b"\n"), version
        ws.send(b"RFB 003.008\n")
        types = rfb.read(rfb.read(1)[0])
        assert 1 in types, types  # None: who may look was decided by the ticket
        ws.send(b"\x01")
        assert rfb.read(4) == b"\x00\x00\x00\x00"  # SecurityResult: OK
        ws.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", rfb.read(4))
        rfb.read(16)  # the pixel format
        name = rfb.read(struct.unpack(">I", rfb.read(4))[0])
        assert width >= 640 and height >= 400, (width, height)
        assert stack.vm_name.encode() in name, name
        # The screen shows something (the kernel's messages, the shell on tty1).
        pixels = rfb.full_frame(width, height)
        assert len(set(pixels)) > 1
    assert audited(stack, "opened", "operator", since)["detail"] == "vnc"


# -- tickets ----------------------------------------------------------------------------


def test_another_users_ticket_is_refused_and_spent(stack: Stack) -> None:
    since = last_audit_id(stack)
    url = stack.ticket("dev", "serial")["url"]
    code, reason = refused_with(stack, "operator", url)  # operator holds VM.Console too
    assert (code, reason) == (4403, "this console ticket was issued to another user")
    code, reason = refused_with(stack, "dev", url)
    assert (code, reason) == (4403, "this console ticket was used already")
    assert "another user" in audited(stack, "refused:ticket-user", "operator", since)["detail"]
    audited(stack, "refused:ticket-used", "dev", since)


def test_a_ticket_opens_one_console_once(stack: Stack) -> None:
    since = last_audit_id(stack)
    url = stack.ticket("dev", "serial")["url"]
    with stack.open("dev", url) as ws:
        ws.send(b"echo once\n")
        read_until(ws, b"once\r\n")
    assert refused_with(stack, "dev", url) == (4403, "this console ticket was used already")
    vnc_url = stack.ticket("dev", "vnc")["url"].replace("/console/vnc", "/console/serial")
    code, reason = refused_with(stack, "dev", vnc_url)
    assert (code, reason) == (4403, "this console ticket is for another VM or console")
    code, _ = refused_with(stack, "dev", f"/api/v1/vms/{stack.vm_id}/console/serial")
    assert code == 4403
    audited(stack, "refused:ticket-used", "dev", since)
    audited(stack, "refused:ticket-console", "dev", since)
    audited(stack, "refused:ticket-missing", "dev", since)


def test_an_expired_ticket_is_refused(stack: Stack) -> None:
    since = last_audit_id(stack)
    url = stack.ticket("dev", "serial")["url"]
    tickets = stack.cp.consoles.tickets
    real_clock = tickets.clock
    tickets.clock = lambda: real_clock() + TICKET_LIFETIME + 1  # 31 s later
    try:
        code, reason = refused_with(stack, "dev", url)
    finally:
        tickets.clock = real_clock
    assert (code, reason) == (4403, "this console ticket expired (good for 30 s)")
    audited(stack, "refused:ticket-expired", "dev", since)


def test_a_websocket_without_a_session_is_refused(stack: Stack) -> None:
    since = last_audit_id(stack)
    url = stack.ticket("dev", "serial")["url"]
    code, reason = refused_with(stack, None, url)  # a valid ticket, no credential
    assert code == 4401 and "log in" in reason
    entry = audited(stack, "refused:unauthorized", "anonymous", since)
    assert "from 127.0.0.1" in entry["detail"]
    code, _ = refused_with(stack, None, url, headers={"Authorization": "Bearer not-a-token"})
    assert code == 4401


def test_a_browser_session_needs_its_csrf_token_on_the_websocket(stack: Stack) -> None:
    since = last_audit_id(stack)
    with httpx.Client(base_url=f"{stack.url}/api/v1", trust_env=False) as browser:
        login = browser.post("/login", json={"name": "dev", "password": "dev-password-1"})
        csrf = login.json()["csrf_token"]
        cookie = f"dockvisor_session={browser.cookies['dockvisor_session']}"
        response = browser.post(f"/vms/{stack.vm_id}/console-tickets", json={"kind": "serial"},
                                headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert response.status_code == 201, response.text
        code, _ = refused_with(stack, None, response.json()["url"], headers={"Cookie": cookie})
        assert code == 4403  # without ?csrf=
        audited(stack, "refused:forbidden", "anonymous", since)
        response = browser.post(f"/vms/{stack.vm_id}/console-tickets", json={"kind": "serial"},
                                headers={"X-CSRF-Token": csrf})  # fmt: skip
        url = response.json()["url"]
        with stack.open(None, f"{url}&csrf={csrf}", headers={"Cookie": cookie}) as ws:
            ws.send(b"echo by-session\n")
            read_until(ws, b"by-session\r\n")
            browser.post("/logout", headers={"X-CSRF-Token": csrf})
            assert closed_with(ws, timeout=3)[0] == 4401  # the session ended: so does this
    audited(stack, "ended:credential", "dev", since)


def test_without_vm_console_there_is_no_ticket(stack: Stack) -> None:
    since = last_audit_id(stack)
    with stack.client("viewer") as viewer:
        response = viewer.post(f"/vms/{stack.vm_id}/console-tickets", json={"kind": "serial"})
        assert response.status_code == 403 and "VM.Console" in response.json()["detail"]
    with stack.client("outsider") as outsider:
        response = outsider.post(f"/vms/{stack.vm_id}/console-tickets", json={"kind": "vnc"})
        assert response.status_code == 404  # a VM they cannot view does not exist for them
    with stack.client("admin") as admin:
        response = admin.post(f"/vms/{stack.stopped_id}/console-tickets", json={"kind": "serial"})
        assert response.status_code == 409 and response.json()["code"] == "bad-power-state"
        assert "start it first" in response.json()["detail"]
        response = admin.post(f"/vms/{stack.vm_id}/console-tickets", json={"kind": "ssh"})
        assert response.status_code == 422
    refusals = [e for e in stack.audit("vm.console.ticket") if e["id"] > since]
    assert {(e["actor"], e["result"]) for e in refusals} >= {
        ("viewer", "refused:forbidden"),
        ("outsider", "refused:not-found"),
        ("admin", "refused:bad-power-state"),
    }


# -- an open console follows its caller ---------------------------------------------------


def test_revoking_access_closes_an_open_console(stack: Stack) -> None:
    since = last_audit_id(stack)
    with stack.client("admin") as admin:
        entry = {"subject": "user:outsider", "path": f"/vms/{stack.vm_id}", "role": "Operator"}
        response = admin.post("/acl", json=entry)
        assert response.status_code == 201, response.text
        with stack.open("outsider", stack.ticket("outsider", "serial")["url"]) as ws:
            ws.send(b"echo granted\n")
            read_until(ws, b"granted\r\n")
            assert admin.delete(f"/acl/{response.json()['id']}").status_code == 204
            revoked = time.monotonic()
            code, reason = closed_with(ws, timeout=5)
            took = time.monotonic() - revoked
    assert code == 4403 and ("VM.Console" in reason or "no VM" in reason), (code, reason)
    assert took <= 2.5, f"the console stayed open {took:.1f} s after the revocation"
    audited(stack, "ended:privilege", "outsider", since)


def test_the_server_stopping_ends_open_consoles(stack: Stack) -> None:
    since = last_audit_id(stack)
    with stack.open("dev", stack.ticket("dev", "serial")["url"]) as ws:
        ws.send(b"echo up\n")
        read_until(ws, b"up\r\n")
        stack.cp.stopping.set()  # what `dockvisor serve` does on SIGTERM (begin_stopping)
        try:
            assert closed_with(ws, timeout=3)[0] == 1001
        finally:
            stack.cp.stopping.clear()
    audited(stack, "ended:server-stop", "dev", since)


def test_the_cli_attaches_a_terminal_to_the_serial_console(stack: Stack) -> None:
    since = last_audit_id(stack)
    env = {**os.environ, "DOCKVISOR_SERVER": stack.url, "DOCKVISOR_TOKEN": stack.tokens["dev"]}
    terminal, tty = os.openpty()
    cli = subprocess.Popen([DOCKVISOR, "vm", "console", stack.vm_name], env=env, stdin=tty,
                           stdout=tty, stderr=tty, close_fds=True)  # fmt: skip
    os.close(tty)
    try:
        seen = b""

        def read_until_cli(wanted: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 30
            while wanted not in seen:
                assert time.monotonic() < deadline, f"{wanted!r} not seen: {seen[-400:]!r}"
                if select.select([terminal], [], [], 0.5)[0]:
                    seen += os.read(terminal, 65536)

        read_until_cli(b"Ctrl-] detaches")
        os.write(terminal, b"echo cli-$((2*21))\r")  # raw: the guest's terminal maps CR
        read_until_cli(b"cli-42")
        os.write(terminal, b"\x1d")  # Ctrl-]
        assert cli.wait(timeout=10) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        os.close(terminal)
    audited(stack, "opened", "dev", since)
    wait_for(lambda: audited_or_none(stack, "closed", "dev", since), 5, "the close")


# -- helpers ----------------------------------------------------------------------------


class RfbReader:
    """RFB read from websocket messages, which may split or join its messages anyhow."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer = b""

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.ws.recv(timeout=30)
            assert isinstance(data, bytes)
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def full_frame(self, width: int, height: int) -> bytes:
        """One full update of the screen, raw, 32 bits a pixel."""
        pixel_format = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        self.ws.send(b"\x00\x00\x00\x00" + pixel_format)  # SetPixelFormat
        self.ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw
        self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        kind, _, rects = struct.unpack(">BBH", self.read(4))
        assert kind == 0  # FramebufferUpdate
        pixels = b""
        for _ in range(rects):
            _x, _y, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
            assert encoding == 0
            pixels += self.read(w * h * 4)
        return pixels


def audited_or_none(stack: Stack, result: str, actor: str, since: int) -> dict[str, Any] | None:
    try:
        return audited(stack, result, actor, since)
    except AssertionError:
        return None


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def console_is_held(vm_name: str) -> bool:
    """Whether a session holds the VM's serial console now: libvirt refuses to open it
    without taking it over (VIR_DOMAIN_CONSOLE_FORCE) while one does."""
    conn = libvirt.open("qemu:///system")
    try:
        stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            conn.lookupByName(vm_name).openConsole(None, stream, 0)
        except libvirt.libvirtError:
            return True
        stream.abort()
        return False
    finally:
        conn.close()
