"""The rules of console tickets (services/consoles.py ConsoleTickets), on a clock of our own;
what each kind of console needs; the guest kernel's consoles."""

from __future__ import annotations

import string
from pathlib import Path

import pytest

from dockvisor.domain.model import Capability, ConsoleKind
from dockvisor.guest.image import GuestImage
from dockvisor.services.consoles import (
    MAX_TICKETS_PER_USER,
    TICKET_LIFETIME,
    ConsoleTickets,
    TicketRefused,
)

SERIAL, VNC = ConsoleKind.SERIAL, ConsoleKind.VNC
ALICE, BOB = 1, 2


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tickets(clock: Clock) -> ConsoleTickets:
    return ConsoleTickets(clock=clock)


def refusal(tickets: ConsoleTickets, secret: str | None, user: int = ALICE, vm: str = "vm1",
            kind: ConsoleKind = SERIAL) -> str:  # fmt: skip
    with pytest.raises(TicketRefused) as caught:
        tickets.redeem(secret, user_id=user, vm_id=vm, kind=kind)
    assert caught.value.code.startswith("ticket-") and str(caught.value)
    return caught.value.code


def test_a_ticket_opens_its_users_console_of_its_vm_and_kind_once(tickets: ConsoleTickets) -> None:
    secret, lifetime = tickets.issue(ALICE, "vm1", SERIAL)
    assert lifetime == TICKET_LIFETIME == 30
    tickets.redeem(secret, user_id=ALICE, vm_id="vm1", kind=SERIAL)
    assert refusal(tickets, secret) == "ticket-used"


def test_secrets_are_long_random_and_url_safe(tickets: ConsoleTickets) -> None:
    secrets = {tickets.issue(ALICE, "vm1", SERIAL)[0] for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert len(secret) >= 43  # 32 bytes, base64url without padding
        assert set(secret) <= set(string.ascii_letters + string.digits + "-_")


def test_only_a_digest_of_the_secret_is_kept(tickets: ConsoleTickets) -> None:
    secret, _ = tickets.issue(ALICE, "vm1", SERIAL)
    kept = repr(vars(tickets))
    assert secret not in kept


def test_another_users_ticket_is_refused_and_spent(tickets: ConsoleTickets) -> None:
    secret, _ = tickets.issue(ALICE, "vm1", SERIAL)
    assert refusal(tickets, secret, user=BOB) == "ticket-user"
    # Presented once, by anyone: spent (a ticket that leaked is good for nothing).
    assert refusal(tickets, secret) == "ticket-used"


def test_an_expired_ticket_is_refused(tickets: ConsoleTickets, clock: Clock) -> None:
    secret, _ = tickets.issue(ALICE, "vm1", SERIAL)
    clock.now += TICKET_LIFETIME - 0.01
    fresh, _ = tickets.issue(ALICE, "vm1", SERIAL)
    tickets.redeem(fresh, user_id=ALICE, vm_id="vm1", kind=SERIAL)  # still in time
    clock.now += 0.01
    assert refusal(tickets, secret) == "ticket-expired"


def test_a_ticket_for_another_vm_or_kind_is_refused(tickets: ConsoleTickets) -> None:
    other_vm, _ = tickets.issue(ALICE, "vm2", SERIAL)
    other_kind, _ = tickets.issue(ALICE, "vm1", VNC)
    assert refusal(tickets, other_vm) == "ticket-console"
    assert refusal(tickets, other_kind) == "ticket-console"


def test_no_ticket_or_a_made_up_one_is_refused(tickets: ConsoleTickets) -> None:
    assert refusal(tickets, None) == "ticket-missing"
    assert refusal(tickets, "") == "ticket-missing"
    assert refusal(tickets, "x" * 43) == "ticket-unknown"


def test_old_tickets_are_forgotten(tickets: ConsoleTickets, clock: Clock) -> None:
    secret, _ = tickets.issue(ALICE, "vm1", SERIAL)
    clock.now += 3600
    tickets.issue(BOB, "vm1", SERIAL)  # issuing sweeps what is long gone
    assert len(tickets) == 1
    assert refusal(tickets, secret) == "ticket-unknown"


def test_a_user_holds_a_bounded_number_of_tickets(tickets: ConsoleTickets, clock: Clock) -> None:
    first, _ = tickets.issue(ALICE, "vm1", SERIAL)
    for _ in range(MAX_TICKETS_PER_USER):
        clock.now += 0.001
        last, _ = tickets.issue(ALICE, "vm1", SERIAL)
    assert len(tickets) == MAX_TICKETS_PER_USER
    assert refusal(tickets, first) == "ticket-unknown"  # the oldest went first
    tickets.redeem(last, user_id=ALICE, vm_id="vm1", kind=SERIAL)
    bob, _ = tickets.issue(BOB, "vm1", SERIAL)  # another user's are their own
    tickets.redeem(bob, user_id=BOB, vm_id="vm1", kind=SERIAL)


def test_each_console_kind_names_the_capability_it_needs() -> None:
    assert SERIAL.capability is Capability.SERIAL_CONSOLE
    assert VNC.capability is Capability.GRAPHICAL_CONSOLE
    assert [k.value for k in ConsoleKind] == ["serial", "vnc"]


def test_the_guest_kernel_writes_to_the_screen_and_the_serial_port() -> None:
    image = GuestImage(key="k", directory=Path("/nowhere"), kernel_version="6", packages=())
    consoles = [word for word in image.cmdline.split() if word.startswith("console=")]
    # The last one is /dev/console, where the guest's init logs: the serial port.
    assert consoles == ["console=tty0", "console=ttyS0"]
