"""A session with a XAPI pool master, through the official SDK (PyPI `XenAPI`).

- `xapi://HOST[:PORT]` and `https://HOST[:PORT]` both mean XAPI's XML-RPC over HTTPS.
- The pool's certificate is checked: against the certificate given with the host's
  credentials when there is one (pinned: that exact certificate, whatever name it
  carries; a XenServer's own is self-signed), else against the system's authorities.
- A pool member answers every call `HOST_IS_SLAVE [master address]`
  (doc/content/xen-api/usage.md): the connection follows it to the master, at the same
  scheme and port.
- `SESSION_INVALID` (a session expired or evicted): the SDK logs in again with the same
  credentials and repeats the call (XenAPI.py, `xenapi_request`).
- One HTTP connection carries one call at a time: calls are serialized. Every call has
  a timeout, so a pool that stops answering is reported, not waited for forever.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import xmlrpc.client
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import XenAPI

from dockvisor.drivers.registry import HostCredentials
from dockvisor.drivers.xapi.errors import xapi_errors
from dockvisor.errors import HypervisorUnreachable, InvalidInput

__all__ = ["PoolConnection", "https_url"]

ORIGINATOR = "dockvisor"
API_VERSION = "2.0"
CALL_TIMEOUT = 20.0  # seconds: long work runs as tasks, so no call should take longer


def https_url(uri: str) -> str:
    """The pool's XML-RPC address for a host URI."""
    parts = urlsplit(uri)
    return urlunsplit(("https", parts.netloc, "/", "", ""))


class _Transport(xmlrpc.client.SafeTransport):
    """HTTPS with our TLS context and a timeout on every connection."""

    def __init__(self, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(context=context)
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPSConnection:
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


def tls_context(certificate: str | None) -> ssl.SSLContext:
    if certificate is None:
        return ssl.create_default_context()
    try:
        context = ssl.create_default_context(cadata=certificate)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidInput(f"the pool's certificate cannot be read as PEM ({exc})") from None
    context.check_hostname = False  # pinned: only this certificate verifies
    return context


class PoolConnection:
    """A logged-in session with the pool master."""

    def __init__(
        self, uri: str, credentials: HostCredentials, *, timeout: float = CALL_TIMEOUT
    ) -> None:
        self.uri = uri
        self._credentials = credentials
        self._timeout = timeout
        self._context = tls_context(credentials.certificate)
        self._lock = threading.RLock()
        self.url = https_url(uri)
        self.master_url = self.url
        # Tasks the pool was running when it stopped answering (drivers/xapi/tasks.py).
        self.lost_tasks: list[str] = []
        self._session = self._login()

    # -- logging in ------------------------------------------------------------------

    def _login(self) -> XenAPI.Session:
        for _hop in range(3):  # a member names the master; the master answers
            session = XenAPI.Session(
                self.master_url, transport=_Transport(self._context, self._timeout)
            )
            with xapi_errors(self.uri, "logging in"):
                try:
                    session.xenapi.login_with_password(
                        self._credentials.user,
                        self._credentials.password,
                        API_VERSION,
                        ORIGINATOR,
                    )
                except XenAPI.Failure as exc:
                    if exc.details and exc.details[0] == "HOST_IS_SLAVE":
                        self.master_url = self._at(str(exc.details[1]))
                        continue
                    raise
            return session
        raise HypervisorUnreachable(f"pool {self.uri}: its members keep naming another master")

    def _at(self, address: str) -> str:
        """The pool's URL at another address (the master's), same scheme and port."""
        parts = urlsplit(self.url)
        host = f"[{address}]" if ":" in address else address
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, "/", "", ""))

    @property
    def tls(self) -> ssl.SSLContext:
        """The TLS context the pool's certificate is checked with (for HTTP handlers)."""
        return self._context

    @property
    def session_ref(self) -> str:
        """The current session's reference (for XAPI's HTTP handlers, e.g. uploads)."""
        return str(self._session._session)

    def fork(self, *, timeout: float) -> PoolConnection:
        """Another session with the same pool, e.g. for a call that blocks (event.from)."""
        return PoolConnection(self.master_url, self._credentials, timeout=timeout)

    # -- calling ---------------------------------------------------------------------

    def call(self, doing: str, method: str, *args: Any) -> Any:
        """XAPI `method` ("VM.start", "Async.VM.clone", "event_from"...) with `args`;
        the contract's error (naming the pool, `doing` and XAPI's code) on failure."""
        with self._lock:
            for attempt in (1, 2):
                target: Any = self._session.xenapi
                for part in method.split("."):
                    target = getattr(target, part)
                with xapi_errors(self.uri, doing):
                    try:
                        return target(*args)
                    except XenAPI.Failure as exc:
                        if exc.details and exc.details[0] == "HOST_IS_SLAVE" and attempt == 1:
                            self.master_url = self._at(str(exc.details[1]))
                            self._session = self._login()
                            continue  # the master changed (pool failover): once more
                        raise
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            # The pool may be gone; the session then expires by itself.
            with contextlib.suppress(Exception):
                self._session.xenapi.session.logout()
