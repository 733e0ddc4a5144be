"""The adapter families, chosen by URI scheme: the one place that names a concrete adapter.

    qemu://  qemu+ssh://  qemu+tls://  qemu+unix://  xen://  xen+ssh://  xen+tls://  test://
                                                     -> libvirt  (drivers/libvirt/)
    xapi://HOST[:PORT]   https://HOST[:PORT]         -> XAPI     (drivers/xapi/), a XenServer
                                                        or XCP-ng pool over HTTPS

The server, the CLI and the tests open every hypervisor with `open_driver`; nothing above
`drivers/` imports an adapter class. Adapters are imported when first used, so a machine
without one family's library can still use the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from dockvisor.drivers.base import HypervisorDriver
from dockvisor.errors import InvalidInput

__all__ = ["FAMILIES", "Family", "HostCredentials", "family_of", "open_driver"]


@dataclass(frozen=True)
class HostCredentials:
    """What a pool asks before it answers: a user, a password and, optionally, the
    certificate (PEM) to trust for its HTTPS when it is not signed by a known authority
    (a XenServer's own self-signed one). Never logged, never shown (repr hides them)."""

    user: str
    password: str
    certificate: str | None = None

    def __repr__(self) -> str:
        return f"HostCredentials(user={self.user!r}, password=***, certificate=...)"


Opener = Callable[[str, HostCredentials | None], HypervisorDriver]


@dataclass(frozen=True)
class Family:
    name: str  # "libvirt", "xapi"
    schemes: tuple[str, ...]  # the URI schemes it answers (before any "+transport")
    needs_credentials: bool  # a user and password are required to connect
    open: Opener
    # Its connection errors may be shown to whoever adds the host as they are (XAPI's
    # codes and parameters); libvirt's are kept in the log (a test:///FILE error quotes
    # the file it read).
    plain_errors: bool


def _open_libvirt(uri: str, credentials: HostCredentials | None) -> HypervisorDriver:
    if credentials is not None:
        raise InvalidInput(
            f"{uri}: libvirt hosts take no user or password here "
            "(ssh keys or libvirt's TLS certificates authenticate them)"
        )
    # Read from the package at call time (tests replace the class there).
    from dockvisor.drivers import libvirt as family
    from dockvisor.drivers.libvirt.events import start_event_loop

    start_event_loop()
    return family.LibvirtDriver(uri)


def _open_xapi(uri: str, credentials: HostCredentials | None) -> HypervisorDriver:
    if credentials is None:
        raise InvalidInput(f"{uri}: a XAPI pool needs a user and a password")
    from dockvisor.drivers.xapi import XapiDriver

    return XapiDriver(uri, credentials)


FAMILIES = (
    Family("libvirt", ("qemu", "xen", "test"), False, _open_libvirt, plain_errors=False),
    Family("xapi", ("xapi", "https"), True, _open_xapi, plain_errors=True),
)


def family_of(uri: str) -> Family:
    """The family whose scheme `uri` has; InvalidInput naming the known schemes if none."""
    scheme = urlsplit(uri).scheme.partition("+")[0].lower()
    for family in FAMILIES:
        if scheme in family.schemes:
            return family
    known = ", ".join(f"{s}://" for f in FAMILIES for s in f.schemes)
    raise InvalidInput(f"{uri!r}: unknown hypervisor URI scheme (known: {known})")


def open_driver(uri: str, credentials: HostCredentials | None = None) -> HypervisorDriver:
    """A connected adapter for `uri`. HypervisorUnreachable if it does not answer."""
    return family_of(uri).open(uri, credentials)
