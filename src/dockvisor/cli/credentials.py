"""API tokens the CLI keeps for the servers it has logged in to (file mode 0600), and a
XAPI pool's credentials for the CLI used without a server (from the environment)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dockvisor.drivers.registry import HostCredentials, family_of
from dockvisor.errors import InvalidInput

__all__ = ["docker_config_dir", "host_credentials", "save_token", "token_for"]


def host_credentials(uri: str) -> HostCredentials | None:
    """For a XAPI pool used directly: DOCKVISOR_HOST_USER, DOCKVISOR_HOST_PASSWORD and,
    optionally, DOCKVISOR_HOST_CERTIFICATE (a PEM file to trust). None for libvirt."""
    if not family_of(uri).needs_credentials:
        return None
    user = os.environ.get("DOCKVISOR_HOST_USER")
    password = os.environ.get("DOCKVISOR_HOST_PASSWORD")
    if not user or not password:
        raise InvalidInput(
            f"{uri} is a XAPI pool: set DOCKVISOR_HOST_USER and DOCKVISOR_HOST_PASSWORD, "
            "or go through a server that has it (--server)"
        )
    certificate = None
    if path := os.environ.get("DOCKVISOR_HOST_CERTIFICATE"):
        certificate = Path(path).read_text()
    return HostCredentials(user, password, certificate)


def _config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockvisor"


def _file() -> Path:
    return _config_home() / "credentials.json"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def docker_config_dir(server: str, token: str) -> Path:
    """A docker CLI configuration directory (for DOCKER_CONFIG) whose config.json makes
    the docker CLI send `token` to `server`'s engine gateway with every request; one per
    server and token, mode 0700/0600 like the credentials file."""
    key = hashlib.sha256(f"{server.rstrip('/')}\0{token}".encode()).hexdigest()[:16]
    directory = _config_home() / "docker" / key
    _write_private(
        directory / "config.json",
        json.dumps({"HttpHeaders": {"Authorization": f"Bearer {token}"}}, indent=2) + "\n",
    )
    os.chmod(directory, 0o700)
    return directory


def _load() -> dict[str, str]:
    try:
        data = json.loads(_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def token_for(server: str) -> str | None:
    return _load().get(server.rstrip("/"))


def save_token(server: str, token: str) -> Path:
    data = _load()
    data[server.rstrip("/")] = token
    path = _file()
    _write_private(path, json.dumps(data, indent=2))
    return path
