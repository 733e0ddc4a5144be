"""The server's files through the CLI that makes them: the data directory is 0700, the
SQLite database with its -wal/-shm/-journal files and the audit key and head file are
0600, and what an older version left wider is narrowed at start with a note on stderr.
`dockvisor serve` believes X-Forwarded-For only from --trusted-proxy addresses.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.api.conftest import free_port

VENV_BIN = Path(sys.executable).parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def dockvisor(data: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKVISOR_")}
    return subprocess.run(
        [str(VENV_BIN / "dockvisor"), "--data-dir", str(data), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def serving(data: Path, *args: str, **environ: str) -> Iterator[tuple[str, Path]]:
    """`dockvisor serve` on a free loopback port: its API URL and its stderr file."""
    port = free_port()
    log = data.parent / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKVISOR_")} | environ
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(VENV_BIN / "dockvisor"), "--hypervisor", "test:///default", "--data-dir",
             str(data), "serve", "--port", str(port), "--gateway-port", "0", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def login_addresses(url: str, token: str) -> list[str]:
    """Make a failed login that claims to come from 203.0.113.9: the addresses the
    server audited its failed logins with."""
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        refused = client.post(
            "/login",
            json={"name": "admin", "password": "wrong-password"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert refused.status_code == 401, refused.text
        entries = client.get(
            "/audit", params={"limit": 1000}, headers={"Authorization": f"Bearer {token}"}
        ).json()
    return [e["detail"] for e in entries if e["action"] == "login" and e["result"] == "failed"]


def test_the_data_directory_and_database_are_private_and_proxies_are_trusted_by_option(
    tmp_path: Path,
) -> None:
    data = tmp_path / "state"
    made = dockvisor(data, "user", "create", "admin", "--admin", "--password-stdin",
                     stdin="admin-password\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert mode(data) == 0o700
    for name in ("dockvisor.db", "audit.key", "audit.head"):
        assert mode(data / name) == 0o600, name
    token = dockvisor(data, "token", "create", "t", "--user", "admin")
    assert token.returncode == 0, token.stderr
    secret = token.stdout.strip()

    with serving(data) as (url, _):
        companions = [data / "dockvisor.db-wal", data / "dockvisor.db-shm"]
        assert all(p.exists() and mode(p) == 0o600 for p in companions), companions
        assert login_addresses(url, secret) == ["127.0.0.1"]

    with serving(data, "--trusted-proxy", "127.0.0.1", "--trusted-proxy", "::1") as (url, log):
        assert login_addresses(url, secret) == ["203.0.113.9", "127.0.0.1"]
        assert "X-Forwarded-For believed from 127.0.0.1, ::1 only" in log.read_text()

    with serving(data, DOCKVISOR_TRUSTED_PROXIES="10.9.0.0/16, 127.0.0.0/8") as (url, _):
        assert login_addresses(url, secret) == ["203.0.113.9", "203.0.113.9", "127.0.0.1"]

    refused = dockvisor(data, "serve", "--trusted-proxy", "*")
    assert refused.returncode == 2
    assert "trusted proxy '*' is not an IP address or network" in refused.stderr


def test_what_an_older_version_left_readable_is_narrowed_at_start_and_said(
    tmp_path: Path,
) -> None:
    data = tmp_path / "state"
    made = dockvisor(data, "user", "create", "admin", "--password-stdin", stdin="pass-word-1\n")
    assert made.returncode == 0, made.stderr
    # As an older version left them: world-readable.
    os.chmod(data, 0o755)
    os.chmod(data / "dockvisor.db", 0o644)
    journal = data / "dockvisor.db-journal"
    journal.write_bytes(b"")
    os.chmod(journal, 0o644)
    os.chmod(data / "audit.key", 0o644)

    again = dockvisor(data, "user", "password", "admin", "--password-stdin", stdin="pass-word-2\n")
    assert again.returncode == 0, again.stderr
    assert f"dockvisor: {data} was mode 0755; now 0700" in again.stderr
    assert f"dockvisor: {data / 'dockvisor.db'} was mode 0644; now 0600" in again.stderr
    assert f"dockvisor: {journal} was mode 0644; now 0600" in again.stderr
    assert f"dockvisor: {data / 'audit.key'} was mode 0644; now 0600" in again.stderr
    assert (mode(data), mode(data / "dockvisor.db"), mode(journal)) == (0o700, 0o600, 0o600)
    assert mode(data / "audit.key") == 0o600

    os.chmod(data, 0o750)
    with serving(data) as (_, log):
        assert f"{data} was mode 0750; now 0700" in log.read_text()
    assert mode(data) == 0o700
