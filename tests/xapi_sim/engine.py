"""Shared simulator state that every call handler sees."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .store import Store
from .wire import NULL_REF


@dataclass
class Config:
    """Knobs the tests may change between calls (see XapiSimulator for the meaning)."""

    users: dict[str, str]
    task_seconds: float = 0.3
    guest_boot_seconds: float | None = 0.2
    auth_failure_delay: float = 0.0
    features: dict[str, bool] = field(
        default_factory=lambda: {
            "Live_set_vcpus": True,
            "DMC": True,
            "Checkpoint": True,
            "VM_start": True,
        }
    )
    guest_networks: dict[str, str] = field(
        default_factory=lambda: {"0/ip": "127.0.0.1", "0/ipv4/0": "127.0.0.1"}
    )


class Engine:
    """Store + configuration + cross-cutting flags (vanished, stopping, cancels)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store()
        self.stop_event = threading.Event()
        self.resumed = threading.Event()
        self.resumed.set()
        self.pool = NULL_REF
        self.master = NULL_REF
        # op keys (task refs) whose work must stop: forced by hard_shutdown/reboot.
        self.forced_cancels: set[str] = set()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail_next: dict[str, list[str]] = {}
        self.lost_upto = -1
        self.domid_counter = 0
        self.guest_overrides: dict[str, dict[str, str]] = {}
        self.imported_bytes: dict[str, int] = {}
        self.scheduler: Any = None

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def feature(self, name: str) -> bool:
        return self.config.features.get(name, True)

    def next_domid(self) -> int:
        self.domid_counter += 1
        return self.domid_counter

    def wait_while_vanished(self) -> bool:
        """Block while the pool has vanished; False once the simulator stops."""
        while not self.resumed.is_set():
            if self.stop_event.wait(0.05):
                return False
        return not self.stopping

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; False if the simulator stopped meanwhile."""
        if seconds > 0 and self.stop_event.wait(seconds):
            return False
        return self.wait_while_vanished()


@dataclass
class Call:
    """One API call being served: who calls, and the key of its VM operations.

    `op_key` is what xapi puts in current_operations: the task ref. Sync calls in
    xapi also run under a task that is not in the database; the simulator gives
    them a fresh unlisted ref.
    """

    engine: Engine
    session: str
    op_key: str
    task: str | None = None
    method: str = ""

    @property
    def store(self) -> Store:
        return self.engine.store
