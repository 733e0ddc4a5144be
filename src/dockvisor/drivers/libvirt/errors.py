"""libvirt's errors turned into dockvisor's, at the adapter boundary.

Every libvirtError that leaves a libvirt call goes through `translate`: its error code
picks the dockvisor class, and the message keeps libvirt's own words after what we were
doing, so the user reads both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import libvirt

from dockvisor import errors

__all__ = ["ERROR_CLASSES", "libvirt_errors", "translate"]

_E = libvirt
ERROR_CLASSES: dict[int, type[errors.DockvisorError]] = {
    # no such object
    _E.VIR_ERR_NO_DOMAIN: errors.NotFound,
    _E.VIR_ERR_NO_DOMAIN_SNAPSHOT: errors.NotFound,
    _E.VIR_ERR_NO_DOMAIN_CHECKPOINT: errors.NotFound,
    _E.VIR_ERR_NO_DOMAIN_BACKUP: errors.NotFound,
    _E.VIR_ERR_NO_STORAGE_POOL: errors.NotFound,
    _E.VIR_ERR_NO_STORAGE_VOL: errors.NotFound,
    _E.VIR_ERR_NO_NETWORK: errors.NotFound,
    _E.VIR_ERR_NO_DOMAIN_METADATA: errors.NotFound,
    _E.VIR_ERR_NO_DEVICE: errors.NotFound,
    _E.VIR_ERR_DEVICE_MISSING: errors.NotFound,
    # name taken
    _E.VIR_ERR_DOM_EXIST: errors.AlreadyExists,
    _E.VIR_ERR_STORAGE_VOL_EXIST: errors.AlreadyExists,
    _E.VIR_ERR_NETWORK_EXIST: errors.AlreadyExists,
    _E.VIR_ERR_MULTIPLE_DOMAINS: errors.AlreadyExists,
    # wrong state for the operation
    _E.VIR_ERR_OPERATION_INVALID: errors.BadPowerState,
    _E.VIR_ERR_BLOCK_COPY_ACTIVE: errors.BadPowerState,
    _E.VIR_ERR_RESOURCE_BUSY: errors.BadPowerState,
    # the hypervisor cannot do it
    _E.VIR_ERR_NO_SUPPORT: errors.Unsupported,
    _E.VIR_ERR_ARGUMENT_UNSUPPORTED: errors.Unsupported,
    _E.VIR_ERR_CONFIG_UNSUPPORTED: errors.Unsupported,
    _E.VIR_ERR_OPERATION_UNSUPPORTED: errors.Unsupported,
    _E.VIR_ERR_CPU_INCOMPATIBLE: errors.Unsupported,
    _E.VIR_ERR_SNAPSHOT_REVERT_RISKY: errors.Unsupported,
    # bad values
    _E.VIR_ERR_INVALID_ARG: errors.InvalidInput,
    _E.VIR_ERR_XML_ERROR: errors.InvalidInput,
    _E.VIR_ERR_XML_DETAIL: errors.InvalidInput,
    _E.VIR_ERR_XML_INVALID_SCHEMA: errors.InvalidInput,
    _E.VIR_ERR_INVALID_MAC: errors.InvalidInput,
    _E.VIR_ERR_OVERFLOW: errors.InvalidInput,
    # the guest did not answer
    _E.VIR_ERR_AGENT_UNRESPONSIVE: errors.GuestTimeout,
    _E.VIR_ERR_AGENT_UNSYNCED: errors.GuestTimeout,
    _E.VIR_ERR_OPERATION_TIMEOUT: errors.GuestTimeout,
    # the connection
    _E.VIR_ERR_NO_CONNECT: errors.HypervisorUnreachable,
    _E.VIR_ERR_INVALID_CONN: errors.HypervisorUnreachable,
    _E.VIR_ERR_RPC: errors.HypervisorUnreachable,
    _E.VIR_ERR_SYSTEM_ERROR: errors.HypervisorUnreachable,
    _E.VIR_ERR_AUTH_FAILED: errors.HypervisorUnreachable,
    _E.VIR_ERR_AUTH_CANCELLED: errors.HypervisorUnreachable,
    _E.VIR_ERR_AUTH_UNAVAILABLE: errors.HypervisorUnreachable,
    _E.VIR_ERR_UNKNOWN_HOST: errors.HypervisorUnreachable,
    _E.VIR_ERR_NO_SERVER: errors.HypervisorUnreachable,
    _E.VIR_ERR_NO_CLIENT: errors.HypervisorUnreachable,
    _E.VIR_ERR_SSH: errors.HypervisorUnreachable,
    _E.VIR_ERR_LIBSSH: errors.HypervisorUnreachable,
    _E.VIR_ERR_GNUTLS_ERROR: errors.HypervisorUnreachable,
    _E.VIR_ERR_ACCESS_DENIED: errors.HypervisorUnreachable,
    _E.VIR_ERR_OPERATION_DENIED: errors.HypervisorUnreachable,
}

# libvirt's messages repeat the code's generic text; keep only the useful part.
_PREFIXES = ("internal error: ", "operation failed: ", "Requested operation is not valid: ")


def translate(exc: libvirt.libvirtError, doing: str) -> errors.DockvisorError:
    """The dockvisor error for `exc`, raised while `doing` (e.g. "starting VM web")."""
    code = exc.get_error_code() or 0
    message = (exc.get_error_message() or str(exc)).strip()
    for prefix in _PREFIXES:
        message = message.removeprefix(prefix)
    first_line = message.splitlines()[0] if message else "unknown libvirt error"
    cls = ERROR_CLASSES.get(code, errors.HypervisorError)
    return cls(f"{doing}: {first_line}")


@contextmanager
def libvirt_errors(doing: str) -> Iterator[None]:
    """Run a block of libvirt calls; their libvirtError leaves as a dockvisor error."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise translate(exc, doing) from exc
