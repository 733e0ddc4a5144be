"""VM consoles for those who hold VM.Console: the serial port and the screen (VNC).

A console opens in two steps, so that a web page can open it as a websocket on the same
origin (a browser's websocket carries cookies, never a header of the page's choosing):

1. `Consoles.issue_ticket(who, vm_id, kind)`: VM.Console on the running VM gives a
   ticket, 32 random bytes (URL-safe), good for 30 s and one use, bound to the user, the
   VM and the kind of console. Only its SHA-256 is kept, in this process's memory.
2. `Consoles.session(who, vm_id, kind, ticket, caller)`, for the websocket: the ticket
   presented by the user it was issued to, for that VM and kind, in time, the first time
   it is presented (any presentation spends it); then VM.Console again; then the
   hypervisor's console (HypervisorDriver.open_console).

While a console is open it asks every second whether its caller's credential still
holds (`caller`) and whether they still hold VM.Console on the VM, and ends when either
does not, when the server stops, or when the console ends (the VM stopped). Every
refusal, every opening and every end is in the audit log under `vm.console` (results
`refused:<code>`, `opened`, `closed`, `ended:<why>`); the issue of a ticket under
`vm.console.ticket`.

A console holder is root in the guest (the built-in template runs a root shell on both
consoles): VM.Console is a privilege over the guest, never over the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dockvisor.domain.model import ConsoleKind
from dockvisor.domain.privileges import Privilege
from dockvisor.errors import BadPowerState, DockvisorError, Forbidden, Unsupported
from dockvisor.services.identity import Principal
from dockvisor.services.inventory import vm_ref
from dockvisor.services.operations import Operations
from dockvisor.store.models import VmRow

__all__ = [
    "ACTION",
    "RECHECK_EVERY",
    "TICKET_LIFETIME",
    "ConsoleSession",
    "ConsoleTickets",
    "Consoles",
    "IssuedTicket",
    "TicketRefused",
]

log = logging.getLogger(__name__)

ACTION = "vm.console"
TICKET_ACTION = "vm.console.ticket"
TICKET_LIFETIME = 30.0  # seconds
RECHECK_EVERY = 1.0  # seconds between two checks of an open console's caller
# Tickets one user may hold at once (the oldest goes first), and how long a spent or
# expired ticket is remembered, to say so rather than "unknown".
MAX_TICKETS_PER_USER = 32
_REMEMBER = 300.0
_CHUNK = 64 * 1024

# The caller of a console as they are now, or None once their credential has ended.
CurrentCaller = Callable[[], Awaitable[Principal | None]]


class TicketRefused(Forbidden):
    """A console ticket that does not open this console; `code` says why (ticket-*)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Ticket:
    user_id: int
    vm_id: str
    kind: ConsoleKind
    expires: float  # on the tickets' clock
    spent: bool = False


@dataclass(frozen=True)
class IssuedTicket:
    secret: str
    expires: datetime
    vm_id: str
    kind: ConsoleKind


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class ConsoleTickets:
    """The tickets of one server process: the rules, in memory, on a clock of seconds
    (`clock`: time.monotonic unless a test sets another)."""

    def __init__(
        self, *, lifetime: float = TICKET_LIFETIME, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[str, _Ticket] = {}

    def issue(self, user_id: int, vm_id: str, kind: ConsoleKind) -> tuple[str, float]:
        """A new ticket's secret, and the number of seconds it is good for."""
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._forget_old(now)
            held = sorted(
                (t.expires, key)
                for key, t in self._tickets.items()
                if t.user_id == user_id and not t.spent and t.expires > now
            )
            for _, key in held[: max(0, len(held) - MAX_TICKETS_PER_USER + 1)]:
                del self._tickets[key]
            self._tickets[_digest(secret)] = _Ticket(user_id, vm_id, kind, now + self.lifetime)
        return secret, self.lifetime

    def redeem(self, secret: str | None, *, user_id: int, vm_id: str, kind: ConsoleKind) -> None:
        """Spend the ticket for this user's console of `kind` on `vm_id`, or raise
        TicketRefused: no ticket, one never issued (or long gone), spent, issued to
        another user, expired, or for another VM or kind."""
        if not secret:
            raise TicketRefused("ticket-missing", "a console needs a ticket (?ticket=...)")
        now = self.clock()
        with self._lock:
            ticket = self._tickets.get(_digest(secret))
            if ticket is None:
                raise TicketRefused("ticket-unknown", "this console ticket is not valid")
            if ticket.spent:
                raise TicketRefused("ticket-used", "this console ticket was used already")
            ticket.spent = True
        if ticket.user_id != user_id:
            raise TicketRefused("ticket-user", "this console ticket was issued to another user")
        if now >= ticket.expires:
            raise TicketRefused(
                "ticket-expired", f"this console ticket expired (good for {self.lifetime:g} s)"
            )
        if ticket.vm_id != vm_id or ticket.kind != kind:
            raise TicketRefused(
                "ticket-console", "this console ticket is for another VM or console"
            )

    def _forget_old(self, now: float) -> None:
        old = [k for k, t in self._tickets.items() if now > t.expires + _REMEMBER]
        for key in old:
            del self._tickets[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._tickets)


class ConsoleSession:
    """An open console: its bytes both ways (without a thread: the socket is watched by
    the event loop), until it `ended` (`why`: the audit result and a message)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self.ended = asyncio.Event()
        self.why: tuple[str, str] | None = None

    async def recv(self) -> bytes:
        """What the console wrote next; b"" once it has ended."""
        try:
            data = await self._loop.sock_recv(self._sock, _CHUNK)
        except OSError:
            data = b""
        if not data:
            self.end("ended:console", "the console ended (the VM stopped, or another session "
                     "took the serial console over)")  # fmt: skip
        return data

    async def send(self, data: bytes) -> None:
        try:
            await self._loop.sock_sendall(self._sock, data)
        except OSError:
            self.end("ended:console", "the console ended")

    def end(self, result: str, message: str) -> None:
        if self.why is None:
            self.why = (result, message)
        self.ended.set()

    def close(self) -> None:
        """Release the console (its readers and writers must have stopped)."""
        self._sock.close()


class Consoles:
    """The consoles of one control plane's VMs: its tickets, and its open sessions."""

    def __init__(
        self,
        ops: Operations,
        stopping: threading.Event,
        *,
        tickets: ConsoleTickets | None = None,
    ) -> None:
        self.ops = ops
        self.stopping = stopping
        self.tickets = tickets or ConsoleTickets()

    def _usable_row(self, who: Principal, vm_id: str, kind: ConsoleKind) -> VmRow:
        """The VM if `who` holds VM.Console there and it runs on a host that has that
        kind of console; NotFound, Forbidden, BadPowerState or Unsupported otherwise."""
        row = self.ops.vm_row(who, vm_id, Privilege.VM_CONSOLE)
        if row.state != "running":
            raise BadPowerState(
                f"VM {row.name} is {row.state}: its consoles exist only while it runs; "
                "start it first"
            )
        driver = self.ops.hosts.driver(row.host_id)
        if kind.capability not in driver.capabilities:
            raise Unsupported(f"the host of VM {row.name} gives no {kind} console")
        return row

    def issue_ticket(self, who: Principal, vm_id: str, kind: ConsoleKind) -> IssuedTicket:
        """A ticket to open the `kind` console of the VM (blocking: a worker thread)."""
        with self.ops.audited(who, TICKET_ACTION, f"vm:{vm_id}"[:128]):
            row = self._usable_row(who, vm_id, kind)
            secret, lifetime = self.tickets.issue(who.user_id, row.id, kind)
        expires = datetime.now(UTC) + timedelta(seconds=lifetime)
        return IssuedTicket(secret, expires, row.id, kind)

    def _open(self, who: Principal, vm_id: str, kind: ConsoleKind) -> socket.socket:
        row = self._usable_row(who, vm_id, kind)
        return self.ops.hosts.driver(row.host_id).open_console(vm_ref(row), kind)

    def refused(self, actor: str, vm_id: str, exc: DockvisorError, client: str = "") -> None:
        """Audit a console refused before its caller was known (blocking)."""
        detail = f"{exc} (from {client})" if client else str(exc)
        self.ops.audit.append(actor, ACTION, f"vm:{vm_id}"[:128], f"refused:{exc.code}", detail)

    @asynccontextmanager
    async def session(
        self,
        who: Principal,
        vm_id: str,
        kind: ConsoleKind,
        ticket: str | None,
        caller: CurrentCaller,
    ) -> AsyncIterator[ConsoleSession]:
        """The open console, for the block: `async with consoles.session(...) as s`.
        A refusal raises from `async with` (audited); the console is released when the
        block ends, and its end audited. `s.ended` is set when the console must end
        (read `s.why`): the block should then leave."""
        obj = f"vm:{vm_id}"[:128]

        async def audit(result: str, detail: str = "") -> None:
            await asyncio.to_thread(self.ops.audit.append, who.name, ACTION, obj, result, detail)

        try:
            self.tickets.redeem(ticket, user_id=who.user_id, vm_id=vm_id, kind=kind)
            sock = await asyncio.to_thread(self._open, who, vm_id, kind)
        except DockvisorError as exc:
            await audit(f"refused:{exc.code}", str(exc))
            raise
        console = ConsoleSession(sock)
        try:
            await audit("opened", str(kind))
        except BaseException:
            console.close()
            raise
        watch = asyncio.create_task(self._watch(console, vm_id, caller))
        try:
            yield console
        finally:
            watch.cancel()
            with suppress(asyncio.CancelledError):
                await watch
            console.close()
            result, message = console.why or ("closed", "the client closed the console")
            try:
                await asyncio.shield(audit(result, f"{kind}: {message}"))
            except Exception:
                log.exception("could not audit the end of a console of %s", vm_id)

    async def _watch(self, console: ConsoleSession, vm_id: str, caller: CurrentCaller) -> None:
        """End the console when the server stops, the caller's credential ends or they
        lose VM.Console on the VM: asked every RECHECK_EVERY seconds."""
        while not console.ended.is_set():
            await asyncio.sleep(RECHECK_EVERY)
            if self.stopping.is_set():
                console.end("ended:server-stop", "the server is stopping")
                return
            now = await caller()
            if now is None:
                console.end("ended:credential", "the credential the console was opened with "
                            "has ended")  # fmt: skip
                return
            try:
                await asyncio.to_thread(self.ops.vm_row, now, vm_id, Privilege.VM_CONSOLE)
            except DockvisorError as exc:
                console.end("ended:privilege", str(exc))
                return
