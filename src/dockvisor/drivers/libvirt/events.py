"""libvirt's event loop, for domain lifecycle events (started, stopped, defined...).

libvirt delivers events only to connections opened after an event loop implementation
is registered, and only while something runs that loop: `start_event_loop` registers
libvirt's default implementation and runs it on a daemon thread, once per process.
"""

from __future__ import annotations

import threading

import libvirt

__all__ = ["EVENT_NAMES", "start_event_loop"]

_started = False
_lock = threading.Lock()

EVENT_NAMES = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}


def start_event_loop() -> None:
    """Register and run libvirt's default event loop (idempotent). Call it before opening
    the connections whose events you want."""
    global _started
    with _lock:
        if _started:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        thread.start()
        _started = True


def _run() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()
