"""Long-running operations and the task objects that track Async calls.

Source: ocaml/xapi/server_helpers.ml do_dispatch (Async.* returns the task ref at
once; the work runs in a new thread), ocaml/xapi/taskHelper.ml (complete: status
success, progress 1, result = Xmlrpc.to_string of the marshalled result; failed:
error_info = [code; params], status cancelled for TASK_CANCELLED; set_cancellable
makes allowed_operations [cancel]) and ocaml/xapi/xapi_task.ml (cancel only marks
current_operations; the operation notices it; destroy of a pending task is
deferred). Result of a void call is Rpc.String "" (gen_server.ml).
Model: an operation validates and marks the VM when the call arrives, waits
`task_seconds` (progress rising in ten steps), then applies all its effects at
once, so a cancelled or failed operation leaves nothing behind.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from .engine import Call, Engine
from .errors import XapiError
from .registry import api
from .wire import NULL_REF, now

STEPS = 10


def _noop() -> None:
    return None


@dataclass
class Plan:
    """What a long operation does once its time has passed (run under the lock)."""

    apply: Callable[[], Any]
    cleanup: Callable[[], None] = _noop
    cancellable: bool = False
    timed: bool = True
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def finish(self) -> None:
        for fn in [self.cleanup, *reversed(self.cleanups)]:
            fn()


def xmlrpc_value(value: Any) -> str:
    """ocaml-rpc Xmlrpc.to_string: the form of task.result (ints untyped, like strings)."""
    if value is None:
        return "<value><nil/></value>"
    if isinstance(value, bool):
        return f"<value><boolean>{int(value)}</boolean></value>"
    if isinstance(value, int | str):
        return f"<value>{escape(str(value))}</value>"
    if isinstance(value, float):
        return f"<value><double>{value:.16g}</double></value>"
    if isinstance(value, list):
        inner = "".join(xmlrpc_value(v) for v in value)
        return f"<value><array><data>{inner}</data></array></value>"
    if isinstance(value, dict):
        members = "".join(
            f"<member><name>{escape(str(k))}</name>{xmlrpc_value(v)}</member>"
            for k, v in value.items()
        )
        return f"<value><struct>{members}</struct></value>"
    return f"<value>{escape(str(value))}</value>"


def create_task(engine: Engine, session: str, label: str) -> str:
    return engine.store.create(
        "task",
        {
            "name_label": label,
            "status": "pending",
            "created": now(),
            "resident_on": engine.master,
            "progress": 0.0,
            "type": "<none/>",
            "backtrace": "()",
            "_session": session,
        },
    )


def cancel_requested(engine: Engine, call: Call, plan: Plan) -> bool:
    if call.op_key in engine.forced_cancels:
        return True
    if not plan.cancellable or call.task is None:
        return False
    task = engine.store.all("task").get(call.task)
    return bool(task) and "cancel" in task["current_operations"].values()


def wait_out(engine: Engine, call: Call, plan: Plan) -> bool:
    """Let the operation's time pass; raise TASK_CANCELLED if cancelled, False if the
    simulator stops first."""
    seconds = engine.config.task_seconds if plan.timed else 0.0
    for step in range(1, STEPS + 1):
        if not engine.sleep(seconds / STEPS):
            return False
        with engine.store.lock:
            if cancel_requested(engine, call, plan):
                raise XapiError("TASK_CANCELLED", call.task or call.op_key)
            if call.task and step < STEPS:
                engine.store.update("task", call.task, progress=round(step / (STEPS + 1), 3))
        if seconds == 0:
            break
    return engine.wait_while_vanished()


def _settle(engine: Engine, call: Call, plan: Plan) -> None:
    plan.finish()
    engine.forced_cancels.discard(call.op_key)


def run_sync(engine: Engine, call: Call, plan: Plan) -> Any:
    try:
        finished = wait_out(engine, call, plan)
    except XapiError:
        with engine.store.lock:
            _settle(engine, call, plan)
        raise
    with engine.store.lock:
        try:
            if not finished:
                raise XapiError("INTERNAL_ERROR", "simulator stopped")
            return plan.apply()
        finally:
            _settle(engine, call, plan)


def _finish_task(engine: Engine, task: str, status: str, **outcome: Any) -> None:
    """The end of a task (taskHelper.ml complete/failed): status, progress 1, finished,
    no allowed operations, plus its result or error_info."""
    store = engine.store
    if not store.exists("task", task):
        return
    store.update(
        "task",
        task,
        status=status,
        progress=1.0,
        finished=now(),
        allowed_operations=[],
        **outcome,
    )
    _maybe_destroy(engine, task)


def complete_task(engine: Engine, task: str, result: Any) -> None:
    _finish_task(engine, task, "success", result=xmlrpc_value("" if result is None else result))


def fail_task(engine: Engine, task: str, error: XapiError) -> None:
    status = "cancelled" if error.code == "TASK_CANCELLED" else "failure"
    _finish_task(engine, task, status, error_info=error.details)


def _maybe_destroy(engine: Engine, task: str) -> None:
    """xapi_task.ml destroy: a destroy asked while pending happens at completion."""
    if "destroy" in engine.store.get("task", task)["current_operations"].values():
        engine.store.destroy("task", task)


def run_async(engine: Engine, call: Call, plan: Plan) -> None:
    """Finish `plan` in a background thread, recording the outcome on call.task."""
    assert call.task is not None
    if plan.cancellable:
        engine.store.update("task", call.task, allowed_operations=["cancel"])

    def worker() -> None:
        task = call.task or NULL_REF
        try:
            finished = wait_out(engine, call, plan)
        except XapiError as error:
            with engine.store.lock:
                _settle(engine, call, plan)
                fail_task(engine, task, error)
            return
        with engine.store.lock:
            if not finished:
                _settle(engine, call, plan)
                return
            try:
                result = plan.apply()
            except XapiError as error:
                _settle(engine, call, plan)
                fail_task(engine, task, error)
                return
            except Exception as error:  # a simulator bug: report it like xapi would
                _settle(engine, call, plan)
                fail_task(engine, task, XapiError("INTERNAL_ERROR", repr(error)))
                return
            _settle(engine, call, plan)
            complete_task(engine, task, result)

    threading.Thread(target=worker, name=f"xapi-sim {call.method}", daemon=True).start()


@api("task.cancel", "r", async_ok=False)
def task_cancel(call: Call, task: str) -> None:
    """xapi_task.ml cancel: mark current_operations; a cancellable operation stops at
    its next step, a non-cancellable one carries on."""
    store = call.store
    record = store.get("task", task)
    if record["status"] == "pending":
        store.update("task", task, current_operations={call.op_key: "cancel"})


@api("task.destroy", "r", async_ok=False)
def task_destroy(call: Call, task: str) -> None:
    store = call.store
    record = store.get("task", task)
    if record["status"] == "pending":
        ops = dict(record["current_operations"])
        ops["task"] = "destroy"
        store.update("task", task, current_operations=ops)
    else:
        store.destroy("task", task)


@api("task.create", "s", "s", async_ok=False)
def task_create(call: Call, label: str, description: str) -> str:
    ref = create_task(call.engine, call.session, label)
    call.store.update("task", ref, name_description=description)
    return ref
