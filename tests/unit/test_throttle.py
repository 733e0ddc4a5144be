"""The login throttle's policy (services/login.py), on a clock the test moves."""

from __future__ import annotations

from dockvisor.services.login import LoginThrottle


def test_five_failures_for_a_user_from_an_address_make_that_pair_wait() -> None:
    throttle = LoginThrottle()
    for n in range(4):
        throttle.failed("bob", "198.51.100.1", at=n)
    assert throttle.admit("bob", "198.51.100.1", at=4) is None
    throttle.failed("bob", "198.51.100.1", at=4)
    refusal = throttle.admit("bob", "198.51.100.1", at=5)
    assert refusal is not None and refusal.wait == 55  # until the oldest is 60 s old
    assert throttle.admit("bob", "198.51.100.2", at=5) is None  # another address
    assert throttle.admit("alice", "198.51.100.1", at=5) is None  # another user
    assert throttle.admit("bob", "198.51.100.1", at=60) is None  # the oldest fell out


def test_a_success_clears_the_pair_and_makes_the_address_known_good() -> None:
    throttle = LoginThrottle()
    for n in range(5):
        throttle.failed("bob", "198.51.100.1", at=n)
    throttle.succeeded("bob", "198.51.100.2", at=6)
    assert throttle.is_known("bob", "198.51.100.2", at=7)
    assert not throttle.is_known("bob", "198.51.100.1", at=7)
    assert throttle.admit("bob", "198.51.100.1", at=7) is not None  # still the pair's
    assert not throttle.is_known("bob", "198.51.100.2", at=6 + 31 * 24 * 3600)  # forgotten


def test_an_address_trying_many_users_waits() -> None:
    throttle = LoginThrottle()
    for n in range(20):
        throttle.failed(f"user{n}", "203.0.113.5", at=n / 10)
    refusal = throttle.admit("someone-else", "203.0.113.5", at=3)
    assert refusal is not None and "from this address" in refusal.why


def test_a_known_good_address_is_never_locked_out_by_failures_elsewhere() -> None:
    throttle = LoginThrottle()
    throttle.succeeded("alice", "192.0.2.10", at=0)
    for n in range(100):  # from one address and from many, and from alice's own
        throttle.failed("alice", f"203.0.113.{n % 50}", at=1 + n / 100)
        throttle.failed(f"x{n}", "192.0.2.10", at=1 + n / 100)
    assert throttle.admit("alice", "192.0.2.10", at=3) is None


def test_a_user_under_attack_from_many_addresses_is_slowed_for_new_addresses() -> None:
    throttle = LoginThrottle()
    for n in range(20):
        throttle.failed("alice", f"203.0.113.{n}", at=n / 10)
    assert throttle.admit("alice", "198.51.100.7", at=3) is None  # one gets through
    slowed = throttle.admit("alice", "198.51.100.8", at=3.5)
    assert slowed is not None and slowed.wait == 1.5 and "under attack" in slowed.why
    assert throttle.admit("alice", "198.51.100.8", at=5) is None  # its turn
