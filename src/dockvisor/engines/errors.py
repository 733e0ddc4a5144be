"""The engine client's errors, and how an engine's answer becomes one.

Errors come back as dockvisor errors carrying the engine's own message: NotFound (404),
AlreadyExists (409 name taken), BadPowerState (409 not running, paused...), InvalidInput
(400, or a `ContainerSpec` refused before any request), EngineUnavailable when the
engine does not answer, EngineError for the rest.
"""

from __future__ import annotations

import re
import ssl

from dockvisor import errors
from dockvisor.errors import (
    AlreadyExists,
    BadPowerState,
    DockvisorError,
    HypervisorError,
    InvalidInput,
    NotFound,
)

__all__ = [
    "EngineCertificateError",
    "EngineError",
    "EngineUnavailable",
    "cert_error",
    "error_for",
    "unavailable",
]

_WRONG_STATE = re.compile(
    r"is (not running|not paused|paused|already paused|restarting)\b"
    r"|cannot remove a running container",
    re.IGNORECASE,
)
_NAME_TAKEN = re.compile(r"already in use|already exists", re.IGNORECASE)


class EngineError(HypervisorError):
    code = "engine-error"


class EngineUnavailable(errors.EngineUnavailable, EngineError):
    """The engine does not answer: refused, reset, timed out or TLS handshake failed.
    Both dockvisor's EngineUnavailable (first in the MRO: 503 in the API) and an
    EngineError."""

    code = errors.EngineUnavailable.code


class EngineCertificateError(EngineUnavailable):
    """The engine's certificate is not one we trust for this VM (wrong CA or name)."""


def error_for(status: int, message: str, doing: str) -> DockvisorError:
    """The dockvisor error for an engine's error answer."""
    message = message.strip()
    text = f"{doing}: {message}"
    if status == 404:
        return NotFound(text)
    if status == 400:
        return InvalidInput(text)
    # A container in the wrong state: 409 mostly, 500 for some (unpause of a running one).
    if status in (409, 500) and _WRONG_STATE.search(message):
        return BadPowerState(text)
    if status == 409 and _NAME_TAKEN.search(message):
        return AlreadyExists(text)
    return EngineError(text)


def cert_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate failure behind `exc`, if that is what it is."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def unavailable(exc: BaseException, doing: str, where: str, name: str) -> EngineUnavailable:
    """Why the engine at `where` (that must be `name`) could not be reached."""
    where = f"the Docker engine at {where}"
    cert = cert_error(exc)
    if cert is not None:
        return EngineCertificateError(
            f"{doing}: {where} is not the engine {name!r}: {cert.verify_message or cert}"
        )
    reason = str(exc) or type(exc).__name__
    return EngineUnavailable(f"{doing}: {where} does not answer ({reason})")
