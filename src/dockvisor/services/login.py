"""Logging in with a password, and the throttle that keeps guessing slow without letting
anyone lock a user out.

The policy (per server process, in memory; defaults of `LoginThrottle`):

- **Per user and address.** After 5 failed logins for one user from one address within
  60 s, that pair waits until the oldest of them is 60 s old. This is what limits
  guessing from one address.
- **Per address.** After 20 failures from one address within 60 s, whatever users they
  named, the address waits the same way (one address trying many users).
- **Known-good addresses are never locked out by others.** An address from which a user
  logged in with the right password in the last 30 days is, for that user, subject only
  to the first rule: failures from anywhere else, or for other users from that address,
  never keep the right password out there.
- **A user under attack is slowed, not locked.** When a user has 20 failures within 60 s
  from all addresses together, attempts for that user from addresses that are not
  known-good for them get through one every 2 s (the others wait): guessing from many
  addresses gets at most 30 tries a minute, a new address of the real user may have to
  retry, a known-good one never does.

A throttled attempt is refused before the password is looked at (a wait says nothing
about the password), with 429 and Retry-After. Every attempt is audited with the
client's address (the TCP peer, or what a trusted proxy says: see `--trusted-proxy`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dockvisor.errors import Throttled, Unauthorized
from dockvisor.services import identity

if TYPE_CHECKING:
    from dockvisor.services.runtime import ControlPlane

__all__ = ["LoginSession", "LoginThrottle", "Refusal", "login"]


@dataclass(frozen=True)
class Refusal:
    """Wait this many seconds; `why` names the rule (for the audit log)."""

    wait: float
    why: str


@dataclass(frozen=True)
class LoginSession:
    user: str
    secret: str  # for the session cookie
    csrf: str


class LoginThrottle:
    """The login policy of the module docstring. Thread-safe; `now` is for tests."""

    def __init__(
        self,
        *,
        window: float = 60.0,
        pair_limit: int = 5,
        address_limit: int = 20,
        user_limit: int = 20,
        new_address_interval: float = 2.0,
        remember: float = 30 * 24 * 3600.0,
        max_known: int = 100_000,
    ) -> None:
        self.window = window
        self.pair_limit = pair_limit
        self.address_limit = address_limit
        self.user_limit = user_limit
        self.new_address_interval = new_address_interval
        self.remember = remember
        self.max_known = max_known
        self._failures: dict[tuple[str, ...], deque[float]] = {}
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._slot: dict[str, float] = {}  # user under attack: when a new address last got in
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, ...], at: float) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and at - failures[0] >= self.window:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def _wait(self, key: tuple[str, ...], limit: int, at: float) -> float:
        recent = self._recent(key, at)
        return self.window - (at - recent[-limit]) if len(recent) >= limit else 0.0

    def is_known(self, user: str, address: str, at: float | None = None) -> bool:
        """Did `user` log in from `address` with the right password lately?"""
        at = time.monotonic() if at is None else at
        with self._lock:
            return self._is_known(user, address, at)

    def _is_known(self, user: str, address: str, at: float) -> bool:
        since = self._known.get((user, address))
        return since is not None and at - since < self.remember

    def admit(self, user: str, address: str, at: float | None = None) -> Refusal | None:
        """None: check the password. A Refusal: answer 429 without checking it."""
        at = time.monotonic() if at is None else at
        with self._lock:
            if wait := self._wait(("pair", user, address), self.pair_limit, at):
                return Refusal(wait, f"{self.pair_limit} failures for this user from this address")
            if self._is_known(user, address, at):
                return None
            if wait := self._wait(("address", address), self.address_limit, at):
                return Refusal(wait, f"{self.address_limit} failures from this address")
            if len(self._recent(("user", user), at)) >= self.user_limit:
                since = at - self._slot.get(user, float("-inf"))
                if since < self.new_address_interval:
                    return Refusal(
                        self.new_address_interval - since,
                        "user under attack: addresses it has not logged in from are slowed",
                    )
                self._slot[user] = at
            return None

    def failed(self, user: str, address: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        with self._lock:
            if len(self._failures) > 50_000:  # many names or addresses: drop the stale
                for key in list(self._failures):
                    self._recent(key, at)
            for key in (("pair", user, address), ("address", address), ("user", user)):
                self._failures.setdefault(key, deque()).append(at)

    def succeeded(self, user: str, address: str, at: float | None = None) -> None:
        """The right password: the pair's failures are forgotten and the address becomes
        known-good for the user. (The address's and the user's counts stay: one good
        login does not excuse guessing at others.)"""
        at = time.monotonic() if at is None else at
        with self._lock:
            self._failures.pop(("pair", user, address), None)
            self._known[(user, address)] = at
            self._known.move_to_end((user, address))
            while len(self._known) > self.max_known:
                self._known.popitem(last=False)


def login(cp: ControlPlane, name: str, password: str, address: str) -> LoginSession:
    """A new session for `name` if `password` is theirs and the throttle lets the attempt
    through; Throttled (with the wait) or Unauthorized otherwise. Every outcome is
    audited with the client's address."""
    refusal = cp.throttle.admit(name, address)
    if refusal is not None:
        cp.audit.append(name, "login", f"user:{name}", "throttled", f"{address} ({refusal.why})")
        wait = max(1, math.ceil(refusal.wait))
        raise Throttled(f"too many failed logins; try again in {wait} s", wait)
    try:
        with cp.db.session() as session:
            user = identity.verify_password(session, name, password)
            secret, csrf = identity.create_session(session, user)
    except Unauthorized:
        cp.throttle.failed(name, address)
        cp.audit.append(name, "login", f"user:{name}", "failed", address)
        raise
    cp.throttle.succeeded(name, address)
    cp.audit.append(name, "login", f"user:{name}", "ok", address)
    return LoginSession(name, secret, csrf)


def logout(cp: ControlPlane, who: identity.Principal, cookie: str | None) -> None:
    """End the session `cookie` names (if any); streams opened with it end within a
    second. Audited."""
    if cookie:
        with cp.db.session() as session:
            identity.end_session(session, cookie)
        cp.recent_tokens.clear()
    cp.audit.append(who.name, "logout", f"user:{who.name}", "ok")
