"""Tasks: long hypervisor work run in the background, with progress, locks and recovery.

Submitting a task records it and takes its object locks in one transaction, so a second
conflicting operation on the same VM is refused at once (Busy) instead of interleaving.
The work then runs on a worker thread; its progress, end and error are stored, audited
and published as events. A server that dies mid-task leaves rows in "running": at the
next start `recover` marks them failed with the reason and drops their locks.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from dockvisor.errors import BadPowerState, Busy, Cancelled, DockvisorError, NotFound
from dockvisor.services.audit import AuditLog
from dockvisor.services.events import Event, EventBroker
from dockvisor.services.identity import Principal
from dockvisor.store.db import Database
from dockvisor.store.models import LockRow, TaskRow, utc

__all__ = ["TaskContext", "TaskInfo", "TaskRunner"]

ACTIVE = ("pending", "running")


@dataclass(frozen=True)
class TaskInfo:
    id: str
    kind: str
    object_type: str
    object_id: str
    requester: str
    requester_id: int | None  # tasks belong to a user id, never to a name that comes back
    state: str
    progress: float
    step: str
    error: str | None
    error_code: str | None
    result: dict[str, Any] | None
    created: datetime
    started: datetime | None
    finished: datetime | None

    @property
    def done(self) -> bool:
        return self.state not in ACTIVE

    @staticmethod
    def of(row: TaskRow) -> TaskInfo:
        return TaskInfo(
            id=row.id,
            kind=row.kind,
            object_type=row.object_type,
            object_id=row.object_id,
            requester=row.requester,
            requester_id=row.requester_id,
            state=row.state,
            progress=row.progress,
            step=row.step,
            error=row.error,
            error_code=row.error_code,
            result=row.result,
            created=utc(row.created),
            started=utc(row.started) if row.started else None,
            finished=utc(row.finished) if row.finished else None,
        )


class TaskContext:
    """What a running task's work receives: a progress callback (step, fraction)."""

    def __init__(self, runner: TaskRunner, task: TaskInfo, chain: tuple[str, ...]) -> None:
        self._runner = runner
        self.task = task
        self._chain = chain
        self._last = (0.0, "")

    def progress(self, step: str, fraction: float) -> None:
        """Record the work's progress; Cancelled if someone asked the task to stop (the
        work then undoes what it made, as for any failure)."""
        at = time.monotonic()
        if step == self._last[1] and at - self._last[0] < 0.5:
            return  # at most two writes a second for one step
        self._last = (at, step)
        with self._runner.db.session() as session:
            row = session.get(TaskRow, self.task.id)
            if row is not None:
                if row.cancel_requested:
                    raise Cancelled(f"task {self.task.id} ({self.task.kind}) was cancelled")
                row.step, row.progress = step[:255], max(row.progress, min(1.0, fraction))
                fraction = row.progress
        self._runner.publish(self.task, "progress", self._chain, step=step, progress=fraction)


class TaskRunner:
    POLL = 5.0  # seconds between reads of a waited-for task (for other processes' ends)

    def __init__(
        self, db: Database, broker: EventBroker, audit: AuditLog, *, workers: int = 8
    ) -> None:
        self.db = db
        self.broker = broker
        self.audit = audit
        self.instance = str(uuid.uuid4())
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="task")
        self._done = threading.Condition()
        # Async waiters: task id -> the events to set (from any thread) when it ends.
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def publish(self, task: TaskInfo, action: str, chain: tuple[str, ...], **data: Any) -> None:
        self.broker.publish(
            Event(
                "task",
                action,
                f"/tasks/{task.id}",
                chain,
                task.requester,
                {
                    "task": task.id,
                    "kind": task.kind,
                    "object": f"{task.object_type}:{task.object_id}",
                    **data,
                },
                requester_id=task.requester_id,
            )
        )

    def submit(
        self,
        *,
        kind: str,
        object_type: str,
        object_id: str,
        chain: tuple[str, ...],
        requester: Principal,
        locks: list[str],
        work: Callable[[TaskContext], dict[str, Any] | None],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> TaskInfo:
        """Record and lock, then run `work` in the background. Busy if a lock is held."""
        task_id = str(uuid.uuid4())
        try:
            with self.db.session() as session:
                for key in locks:
                    holder = session.get(LockRow, key)
                    if holder is not None:
                        other = session.get(TaskRow, holder.task_id)
                        what = f"{other.kind} task {other.id}" if other else "another task"
                        raise Busy(
                            f"{object_type} {object_id} is busy with {what}; wait for it to finish"
                        )
                    session.add(
                        LockRow(object_key=key, task_id=task_id, acquired=datetime.now(UTC))
                    )
                row = TaskRow(
                    id=task_id,
                    kind=kind,
                    object_type=object_type,
                    object_id=object_id,
                    requester_id=requester.user_id,
                    requester=requester.name,
                    state="pending",
                    progress=0.0,
                    step="",
                    created=datetime.now(UTC),
                    instance=self.instance,
                )
                session.add(row)
                session.flush()
                task = TaskInfo.of(row)
        except IntegrityError:
            raise Busy(f"{object_type} {object_id} is busy with another task") from None
        self.publish(task, "created", chain)
        self._pool.submit(self._run, task, chain, work, on_failure)
        return task

    def _run(
        self,
        task: TaskInfo,
        chain: tuple[str, ...],
        work: Callable[[TaskContext], dict[str, Any] | None],
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self._update(task.id, state="running", started=datetime.now(UTC))
        ctx = TaskContext(self, task, chain)
        try:
            result = work(ctx) or {}
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded
            code = exc.code if isinstance(exc, DockvisorError) else "internal-error"
            message = str(exc) or type(exc).__name__
            if on_failure is not None:
                try:
                    on_failure(exc)
                except Exception as cleanup:  # noqa: BLE001
                    message += f" (and cleaning up failed: {cleanup})"
            self._finish(task, chain, "failed", error=message, error_code=code)
        else:
            self._finish(task, chain, "succeeded", result=result)

    def request_cancel(self, task_id: str) -> TaskInfo:
        """Ask a running task to stop (it notices at its next progress report, in
        whichever process runs it); BadPowerState if it has ended."""
        with self.db.session() as session:
            row = session.get(TaskRow, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            if row.state not in ("pending", "running"):
                raise BadPowerState(f"task {task_id} has already {row.state}")
            row.cancel_requested = True
            return TaskInfo.of(row)

    def _update(self, task_id: str, **values: Any) -> None:
        with self.db.session() as session:
            row = session.get(TaskRow, task_id)
            if row is not None:
                for key, value in values.items():
                    setattr(row, key, value)

    def _finish(
        self,
        task: TaskInfo,
        chain: tuple[str, ...],
        state: str,
        *,
        error: str | None = None,
        error_code: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        with self.db.session() as session:
            row = session.get(TaskRow, task.id)
            if row is not None:
                row.state, row.error, row.error_code, row.result = state, error, error_code, result
                row.finished = datetime.now(UTC)
                if state == "succeeded":
                    row.progress = 1.0
            session.execute(delete(LockRow).where(LockRow.task_id == task.id))
        self.audit.append(
            task.requester, task.kind, f"{task.object_type}:{task.object_id}", state, error or ""
        )
        self.publish(task, state, chain, error=error, error_code=error_code)
        with self._done:
            self._done.notify_all()
            waiters = self._waiters.pop(task.id, set())
        for loop, ended in waiters:
            with suppress(RuntimeError):  # that loop has closed: nobody waits any more
                loop.call_soon_threadsafe(ended.set)

    def get(self, task_id: str) -> TaskInfo:
        with self.db.read() as session:
            row = session.get(TaskRow, task_id)
            if row is None:
                raise NotFound(f"no task {task_id}")
            return TaskInfo.of(row)

    def recent(self, limit: int) -> list[TaskInfo]:
        """The newest tasks first."""
        with self.db.read() as session:
            rows = session.scalars(select(TaskRow).order_by(TaskRow.created.desc()).limit(limit))
            return [TaskInfo.of(r) for r in rows]

    def wait(self, task_id: str, timeout: float) -> TaskInfo:
        """The task once it has ended, or as it is after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            left = deadline - time.monotonic()
            if task.done or left <= 0:
                return task
            with self._done:
                self._done.wait(min(left, 0.5))

    async def wait_async(
        self,
        task_id: str,
        timeout: float,
        *,
        stop: threading.Event | None = None,
        known: TaskInfo | None = None,
    ) -> TaskInfo:
        """`wait` for an event loop: no thread is held while waiting, so any number of
        callers may wait at once. A task that ends in this process wakes its waiters at
        once; one that ends in another server process (a shared database) is seen within
        `POLL` seconds. Once `stop` is set (the server is stopping; `wake_all` wakes the
        waiters) it answers the task as it is. `known`: the task as just read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task = known
        while True:
            ended = asyncio.Event()
            waiter = (loop, ended)
            with self._done:  # registered before reading: an end in between still wakes
                self._waiters.setdefault(task_id, set()).add(waiter)
            try:
                if task is None:
                    task = await asyncio.to_thread(self.get, task_id)
                left = deadline - loop.time()
                if task.done or left <= 0 or (stop is not None and stop.is_set()):
                    return task
                with suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), min(left, self.POLL))
                task = None
            finally:
                with self._done:
                    waiting = self._waiters.get(task_id)
                    if waiting is not None:
                        waiting.discard(waiter)
                        if not waiting:
                            del self._waiters[task_id]

    def wake_all(self) -> None:
        """Wake every async waiter (the server is stopping: they answer at once)."""
        with self._done:
            waiters = [w for group in self._waiters.values() for w in group]
        for loop, ended in waiters:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(ended.set)

    def recover(self) -> list[TaskInfo]:
        """Fail the tasks a previous server process left unfinished; drop their locks."""
        failed = []
        with self.db.session() as session:
            rows = session.scalars(
                select(TaskRow).where(TaskRow.state.in_(ACTIVE), TaskRow.instance != self.instance)
            )
            for row in rows:
                row.state = "failed"
                row.error = "the server stopped while this task ran; it did not finish"
                row.error_code = "interrupted"
                row.finished = datetime.now(UTC)
                failed.append(TaskInfo.of(row))
            active = select(TaskRow.id).where(TaskRow.state.in_(ACTIVE))
            session.execute(delete(LockRow).where(LockRow.task_id.not_in(active)))
        for task in failed:
            self.audit.append(
                task.requester,
                task.kind,
                f"{task.object_type}:{task.object_id}",
                "failed",
                "interrupted by a server restart",
            )
        return failed

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
