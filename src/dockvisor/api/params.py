"""What the API's routes share: who is calling, path parameters, the answer to a task."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Response
from fastapi import Path as PathParam

from dockvisor.api import schemas as s
from dockvisor.api.security import authenticate
from dockvisor.domain.privileges import Privilege
from dockvisor.services.identity import Principal
from dockvisor.services.tasks import TaskInfo

__all__ = ["Key", "NumericId", "P", "Who", "task_out"]

P = Privilege

Who = Annotated[Principal, Depends(authenticate)]
# Path parameters: ids and names are short and printable; numeric ids fit 32 bits.
Key = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
NumericId = Annotated[int, PathParam(ge=1, le=s.MAX_ID)]


def task_out(response: Response, task: TaskInfo) -> s.TaskOut:
    """A task as the answer to the request that started it (202, Location: the task)."""
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return s.TaskOut(**task.__dict__)
