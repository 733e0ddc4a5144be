"""The Docker Engine API as dockvisor calls it: the version, and how paths, queries and
exec requests are written. Shared by the blocking client (engines/docker.py) and the
asynchronous calls (engines/async_engine.py)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from dockvisor.errors import InvalidInput

__all__ = ["API_VERSION", "Since", "c", "exec_body", "i", "logs_query", "query", "timestamp"]

API_VERSION = "v1.41"  # Docker 20.10, what the built-in guest runs

Since = float | dt.datetime | None


def query(**values: Any) -> dict[str, str]:
    """Query parameters as dockerd reads them: booleans 1/0, filters as JSON."""
    params: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            params[key] = "1" if value else "0"
        elif isinstance(value, Mapping):
            params[key] = json.dumps({k: list(v) for k, v in value.items()})
        else:
            params[key] = str(value)
    return params


def timestamp(since: Since) -> int | None:
    if since is None:
        return None
    if isinstance(since, dt.datetime):
        return int(since.timestamp())
    return int(since)


def logs_query(
    *,
    stdout: bool,
    stderr: bool,
    tail: int | None,
    timestamps: bool,
    since: Since,
    follow: bool,
) -> dict[str, str]:
    if tail is not None and tail < 0:
        raise InvalidInput(f"tail must be 0 or more lines, not {tail}")
    return query(
        stdout=stdout,
        stderr=stderr,
        timestamps=timestamps,
        follow=follow,
        tail="all" if tail is None else tail,
        since=timestamp(since),
    )


def exec_body(
    command: Sequence[str],
    *,
    stdin: bool,
    tty: bool,
    env: Mapping[str, str] | None,
    workdir: str | None,
    user: str | None,
) -> dict[str, Any]:
    """The body of POST /containers/{id}/exec; InvalidInput for a command that is not a
    non-empty list of arguments."""
    if isinstance(command, str) or not command:
        raise InvalidInput("give the command as a non-empty list of arguments")
    body: dict[str, Any] = {
        "Cmd": list(command),
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": tty,
    }
    if env:
        body["Env"] = [f"{k}={v}" for k, v in env.items()]
    if workdir:
        body["WorkingDir"] = workdir
    if user:
        body["User"] = user
    return body


def c(container: str) -> str:
    """A container's name or id in a path."""
    return quote(container, safe="")


def i(image: str) -> str:
    """An image reference in a path."""
    return quote(image, safe="/:@")
