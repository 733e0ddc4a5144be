"""API tokens the CLI keeps for the servers it has logged in to (file mode 0600)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["save_token", "token_for"]


def _file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dockvisor" / "credentials.json"


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    return path
