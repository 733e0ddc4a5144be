"""XAPI's asynchronous calls: `Async.<Class>.<method>` returns a task at once; the work's
progress (0 to 1) and its end are read from the task (doc/content/xen-api/usage.md,
"Asynchronous calls"; ocaml/idl/datamodel.ml, class task).

The task's progress becomes dockvisor's, scaled into the caller's share. If the caller's
progress callback raises (dockvisor's task is being cancelled, the server stops), the
XAPI task is cancelled (`task.cancel`) and its end awaited before the error goes on:
XAPI undoes what a cancelled operation made. A task is destroyed once read.

If the pool stops answering while a task runs, the dockvisor task fails at once, and the
XAPI task is remembered on the connection (`lost_tasks`): when the pool answers again
the driver cancels it, or undoes what it made if it finished meanwhile, so nothing the
user was told had failed stays in the pool.
"""

from __future__ import annotations

import time
import xmlrpc.client
from contextlib import suppress
from typing import Any

from dockvisor.drivers.base import Progress, no_progress
from dockvisor.drivers.xapi.connection import PoolConnection
from dockvisor.drivers.xapi.errors import translate
from dockvisor.errors import DockvisorError, HypervisorError, HypervisorUnreachable

__all__ = ["cancel_task", "decode_result", "run_task"]

POLL = 0.1  # seconds between two reads of a running task
CANCEL_WAIT = 30.0  # seconds a cancelled task is given to end


def decode_result(result: str) -> Any:
    """A task's result: XAPI stores the call's value XML-RPC encoded ("<value>OpaqueRef:
    ...</value>"); "" for a call that returns nothing."""
    if not result.strip():
        return None
    (value,), _ = xmlrpc.client.loads(f"<params><param>{result}</param></params>")
    return value


def run_task(
    conn: PoolConnection,
    doing: str,
    method: str,
    *args: Any,
    progress: Progress = no_progress,
    share: tuple[float, float] = (0.0, 1.0),
) -> Any:
    """Run `Async.<method>(*args)` to its end; its result. The contract's error (with
    XAPI's code) if the task fails."""
    task = conn.call(doing, f"Async.{method}", *args)
    low, high = share
    ended = lost = False
    try:
        while True:
            record = conn.call(doing, "task.get_record", task)
            status = record["status"]
            ended = status != "pending"
            if status == "success":
                return decode_result(str(record.get("result", "")))
            if status == "failure":
                raise translate(conn.uri, doing, record.get("error_info") or [])
            if status == "cancelled":
                raise HypervisorError(f"pool {conn.uri}: {doing}: the XAPI task was cancelled")
            progress(doing, low + (high - low) * float(record.get("progress", 0.0)))
            time.sleep(POLL)
    except HypervisorUnreachable:
        if not ended:  # the pool went away with the task running: settled when it is back
            lost = True
            conn.lost_tasks.append(task)
        raise
    except BaseException:
        if not ended:  # the caller gave up: XAPI undoes the work
            cancel_task(conn, task)
        raise
    finally:
        if not lost:
            with suppress(DockvisorError):
                conn.call("forgetting a finished task", "task.destroy", task)


def cancel_task(conn: PoolConnection, task: str) -> None:
    """Ask XAPI to cancel the task and wait (a while) for it to end."""
    with suppress(DockvisorError):
        conn.call("cancelling a task", "task.cancel", task)
        deadline = time.monotonic() + CANCEL_WAIT
        while time.monotonic() < deadline:
            if conn.call("cancelling a task", "task.get_status", task) != "pending":
                return
            time.sleep(POLL)
