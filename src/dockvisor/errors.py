"""Every error dockvisor reports, as one tree.

    DockvisorError                  anything dockvisor refuses or fails to do
    ├── InvalidInput                a value that cannot be used: a size, a name, a count
    ├── NotFound                    no such VM, template or snapshot
    ├── AlreadyExists               the name is taken
    ├── BadPowerState               the VM is running and must be off, or the reverse
    ├── Unsupported                 this hypervisor or template cannot do that
    ├── OutOfCapacity               more vCPUs or memory than the host or the VM allows
    ├── HypervisorUnreachable       the hypervisor URI cannot be connected to
    ├── HypervisorError             the hypervisor failed an operation for another reason
    ├── GuestTimeout                the guest did not reach a state in time
    ├── WarmStartUnavailable        no warm spare can become this VM (a create boots cold)
    ├── ImageBuildError             the Docker-ready guest image could not be built
    ├── CatalogError                a template catalog failed to answer or gave bad data
    ├── Unauthorized                no valid credentials (log in, or a valid API token)
    ├── Forbidden                   valid credentials, but not the privilege needed
    ├── Busy                        another task holds the object; try again later
    └── Throttled                   too many failed logins; wait before trying again

Adapters wrap their backend's exceptions (libvirtError, XAPI Failure) into these at
their boundary; nothing above the adapters sees a backend exception. Each class has a
stable `code` that the CLI prints and the API will return.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "BadPowerState",
    "DockvisorError",
    "EngineUnavailable",
    "GuestTimeout",
    "HypervisorError",
    "HypervisorUnreachable",
    "Busy",
    "CatalogError",
    "Forbidden",
    "ImageBuildError",
    "InvalidInput",
    "NotFound",
    "OutOfCapacity",
    "Throttled",
    "Cancelled",
    "Unauthorized",
    "Unsupported",
    "WarmStartUnavailable",
]


class DockvisorError(Exception):
    """Base of every error dockvisor reports; the message is one line for a human."""

    code = "error"


class InvalidInput(DockvisorError):
    code = "invalid-input"


class NotFound(DockvisorError):
    code = "not-found"


class AlreadyExists(DockvisorError):
    code = "already-exists"


class BadPowerState(DockvisorError):
    code = "bad-power-state"


class Unsupported(DockvisorError):
    code = "unsupported"


class OutOfCapacity(DockvisorError):
    code = "out-of-capacity"


class HypervisorUnreachable(DockvisorError):
    code = "hypervisor-unreachable"


class HypervisorError(DockvisorError):
    code = "hypervisor-error"


class GuestTimeout(DockvisorError):
    code = "guest-timeout"


class WarmStartUnavailable(DockvisorError):
    """No warm spare can become the VM asked for (none left, none of that size, or they
    no longer match their template or this QEMU); the message says which. Nothing was
    made: the create boots cold."""

    code = "warm-start-unavailable"


class ImageBuildError(DockvisorError):
    code = "image-build-failed"


class CatalogError(DockvisorError):
    """A template catalog did not answer, or what it gave cannot be trusted (malformed
    index, bad signature, wrong size or checksum). The message names the catalog and the
    file; nothing was registered."""

    code = "catalog-error"


class Unauthorized(DockvisorError):
    code = "unauthorized"


class Forbidden(DockvisorError):
    code = "forbidden"


class Busy(DockvisorError):
    code = "busy"


class Cancelled(DockvisorError):
    """A task stopped because someone asked it to (its work undoes what it made)."""

    code = "cancelled"


class Throttled(DockvisorError):
    code = "throttled"

    def __init__(self, message: str, retry_after: float = 60.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(DockvisorError):
    """A VM's Docker engine cannot be used now: the VM is off, or its engine does not
    answer. Says which, never shows stale data instead."""

    code = "engine-unavailable"
