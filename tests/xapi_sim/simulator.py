"""XapiSimulator: a XenAPI pool on loopback for tests, driven through the real SDK."""

from __future__ import annotations

import copy
import os
import ssl
import tempfile
from typing import Any

from . import (
    devices,
    events,
    query,
    sessions,
    sm,
    storage,
    tasks,
    vm_copies,
    vm_power,
    vm_settings,
)
from .bootstrap import build_pool, restrictions
from .certs import make_certificate
from .dispatch import register_generic
from .engine import Config, Engine
from .guests import Scheduler, report_tools
from .http_server import Front
from .lifecycle import update_allowed_operations
from .memory import GIB
from .schema import CLASSES
from .storage import refresh_sr

_MODULES = (devices, events, query, sessions, storage, tasks, vm_copies, vm_power, vm_settings)
register_generic()


class FeatureSwitches(dict[str, bool]):
    """sim.features: switching one off also updates pool.restrictions."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.config.features)
        self._engine = engine
        engine.config.features = self

    def __setitem__(self, key: str, value: bool) -> None:
        super().__setitem__(key, value)
        engine = self._engine
        with engine.store.lock:
            if engine.store.exists("pool", engine.pool):
                engine.store.update("pool", engine.pool, restrictions=restrictions(engine))


class XapiSimulator:
    """A pool master on https://127.0.0.1:PORT/ and a member on https://[::1]:PORT/.

    users: user name -> password accepted by session.login_with_password.
    members: how many pool members besides the master (0: no member listener).
    tls: serve HTTPS with a self-signed certificate (certificate_pem), else HTTP.
    sr_size: physical size in bytes of the default SR "Local storage".
    sr_type: that SR's type, "lvm" (thick LVHD) or "ext" (thin VHD files); see storage.py.
    host_memory: memory_total of each host in bytes.
    task_seconds / guest_boot_seconds / auth_failure_delay: see the properties.

    Back doors for tests (none of them is part of XAPI): expire_sessions,
    set_guest_networks, vanish/come_back, lose_events, fail_next, features, sr_size,
    set_sm_features, objects/record (the hypervisor's own view), calls, imported_bytes.
    Each module of this package cites the xapi source its rules come from and says what
    is modelled.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        members: int = 1,
        tls: bool = True,
        *,
        sr_size: int = 400 * GIB,
        sr_type: str = "lvm",
        host_memory: int = 32 * GIB,
        task_seconds: float = 0.3,
        guest_boot_seconds: float | None = 0.2,
        auth_failure_delay: float = 0.0,
    ) -> None:
        config = Config(
            users=dict(users or {"root": "s3cret"}),
            task_seconds=task_seconds,
            guest_boot_seconds=guest_boot_seconds,
            auth_failure_delay=auth_failure_delay,
        )
        self.engine = Engine(config)
        self._features = FeatureSwitches(self.engine)
        self.members = members
        self.tls = tls
        self.certificate_pem: str | None = None
        self._context: ssl.SSLContext | None = None
        self._front: Front | None = None
        self._started = False
        self._stopped = False
        with self.engine.store.lock:
            build_pool(self.engine, members, sr_size, host_memory, sr_type)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> XapiSimulator:
        """Start serving; returns self."""
        if self._started:
            return self
        if self.tls:
            cert, key = make_certificate()
            self.certificate_pem = cert
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                cert_path, key_path = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
                with open(cert_path, "w") as handle:
                    handle.write(cert)
                with open(key_path, "w") as handle:
                    handle.write(key)
                self._context.load_cert_chain(cert_path, key_path)
        self.engine.scheduler = Scheduler(self.engine)
        self._front = Front(self.engine, self._context, self.members > 0)
        self._front.open()
        self._started = True
        return self

    def stop(self) -> None:
        """Close the listeners and end worker threads (returns within about a second)."""
        if self._stopped:
            return
        self._stopped = True
        engine = self.engine
        engine.stop_event.set()
        with engine.store.lock:
            engine.store.cond.notify_all()
        if self._front is not None:
            self._front.close()
        if engine.scheduler is not None:
            engine.scheduler.stop()

    def __enter__(self) -> XapiSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses ---------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._front is not None, "start() first"
        return self._front.port

    @property
    def url(self) -> str:
        """The pool master: scheme://127.0.0.1:PORT/."""
        assert self._front is not None, "start() first"
        return self._front.master_url

    @property
    def member_url(self) -> str | None:
        """A pool member (same port on ::1); None when members=0."""
        if self._front is None or self.members == 0:
            return None
        return self._front.member_url

    # -- knobs ---------------------------------------------------------------------
    @property
    def task_seconds(self) -> float:
        """How long a long-running operation (and its Async task) takes."""
        return self.engine.config.task_seconds

    @task_seconds.setter
    def task_seconds(self, value: float) -> None:
        self.engine.config.task_seconds = value

    @property
    def guest_boot_seconds(self) -> float | None:
        """Delay between a VM (re)booting and its guest tools reporting; None: never."""
        return self.engine.config.guest_boot_seconds

    @guest_boot_seconds.setter
    def guest_boot_seconds(self, value: float | None) -> None:
        self.engine.config.guest_boot_seconds = value

    @property
    def auth_failure_delay(self) -> float:
        """Pause before SESSION_AUTHENTICATION_FAILED (real xapi: 5 s)."""
        return self.engine.config.auth_failure_delay

    @auth_failure_delay.setter
    def auth_failure_delay(self, value: float) -> None:
        self.engine.config.auth_failure_delay = value

    @property
    def features(self) -> dict[str, bool]:
        """Pool features, all on: Live_set_vcpus, DMC, Checkpoint, VM_start."""
        return self._features

    @property
    def calls(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Every call received, as (wire method, params without the session)."""
        return self.engine.calls

    @property
    def sr_size(self) -> int:
        with self.engine.store.lock:
            return self.engine.store.get("SR", self.default_sr)["physical_size"]

    @sr_size.setter
    def sr_size(self, value: int) -> None:
        """Resize the default SR (make it small to provoke out-of-space errors)."""
        with self.engine.store.lock:
            self.engine.store.update("SR", self.default_sr, physical_size=value)
            refresh_sr(self.engine.store, self.default_sr)

    # -- back doors ---------------------------------------------------------------
    def set_sm_features(self, sr_type: str, declared: list[str]) -> None:
        """The storage driver of `sr_type` declares these capabilities from now on, as
        in its DRIVER_INFO ("VDI_RESIZE", "VDI_RESET_ON_BOOT/2"...): e.g. add
        VDI_RESIZE_ONLINE, which no driver of xapi-project/sm declares today."""
        store = self.engine.store
        with store.lock:
            sm.set_features(store, sr_type, declared)
            for vdi, record in list(store.all("VDI").items()):
                if store.get("SR", record["SR"])["type"] == sr_type:
                    storage.update_vdi_operations(store, vdi)

    def sm_features(self, sr_type: str) -> list[str]:
        """What the driver of `sr_type` declares now (names, without versions)."""
        with self.engine.store.lock:
            ref = sm.sm_of(self.engine.store, sr_type)
            return sorted(self.engine.store.get("SM", ref)["features"]) if ref else []

    @property
    def default_sr(self) -> str:
        with self.engine.store.lock:
            return self.engine.store.get("pool", self.engine.pool)["default_SR"]

    @property
    def master_ref(self) -> str:
        return self.engine.master

    def expire_sessions(self) -> None:
        """Every session becomes invalid: the next call gets SESSION_INVALID [ref]."""
        with self.engine.store.lock:
            sessions.expire_all(self.engine)

    def set_guest_networks(self, vm_uuid: str, networks: dict[str, str]) -> None:
        """What the VM's guest tools report from now on (VM_guest_metrics.networks);
        creates or updates its guest metrics at once."""
        engine = self.engine
        with engine.store.lock:
            engine.guest_overrides[vm_uuid] = dict(networks)
            ref = engine.store.by_uuid("VM", vm_uuid)
            report_tools(engine, ref)

    def vanish(self) -> None:
        """The pool disappears: listeners closed, connections reset, tasks frozen."""
        self.engine.resumed.clear()
        if self._front is not None:
            self._front.close()

    def come_back(self) -> None:
        """The pool is reachable again on the same port; frozen tasks carry on."""
        if self._front is not None:
            self._front.open()
        self.engine.resumed.set()

    def lose_events(self) -> None:
        """Every event.from token issued so far is too old: EVENTS_LOST (a model)."""
        with self.engine.store.lock:
            self.engine.store.generation += 1
            self.engine.lost_upto = self.engine.store.generation

    def fail_next(self, method_name: str, *error_details: str) -> None:
        """The next call of `method_name` (e.g. "VM.start", sync or Async) fails with
        ErrorDescription [*error_details]."""
        self.engine.fail_next[method_name] = [str(d) for d in error_details]

    def objects(self, cls: str) -> dict[str, dict[str, Any]]:
        """ref -> record of every object of `cls`, a copy with native Python values
        (int64 as int, DateTime as datetime), derived sets included."""
        assert cls in CLASSES, cls
        with self.engine.store.lock:
            return {r: self._decoded(cls, r) for r in self.engine.store.all(cls)}

    def record(self, cls: str, ref: str) -> dict[str, Any]:
        """One object's record, as objects() gives it; KeyError if absent."""
        with self.engine.store.lock:
            if not self.engine.store.exists(cls, ref):
                raise KeyError(ref)
            return self._decoded(cls, ref)

    def imported_bytes(self, vdi_ref: str) -> int | None:
        """How many bytes the last /import_raw_vdi wrote into that VDI."""
        return self.engine.imported_bytes.get(vdi_ref)

    def refresh_allowed_operations(self) -> None:
        with self.engine.store.lock:
            for ref in list(self.engine.store.all("VM")):
                update_allowed_operations(self.engine.store, ref)

    def _decoded(self, cls: str, ref: str) -> dict[str, Any]:
        record = self.engine.store.public_record(cls, ref)
        return {k: copy.deepcopy(v) for k, v in record.items()}
