"""The event stream (GET /api/v1/events, server-sent events) tells each user only about
what they can view: their own tasks, and VMs they hold VM.View on."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from dockvisor.domain.sizes import MiB
from tests.api.conftest import TEMPLATE, Server

Event = dict[str, Any]


class EventStream:
    """GET /events read on a background thread: the `data:` payloads, as they come."""

    def __init__(self, server: Server, user: str) -> None:
        self.user = user
        self.events: list[Event] = []
        self.status: int | None = None
        self.content_type = ""
        self._client = httpx.Client(
            base_url=f"{server.url}/api/v1",
            headers={"Authorization": f"Bearer {server.tokens[user]}"},
            timeout=httpx.Timeout(10, read=60),
            trust_env=False,
        )
        self._connected = threading.Event()
        self.ended = threading.Event()  # the server ended the stream
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, name=f"events-{user}", daemon=True)

    def __enter__(self) -> EventStream:
        self._thread.start()
        assert self._connected.wait(10), f"the event stream of {self.user} did not open"
        assert self.status == 200, self.status
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/events") as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                stream = response.extensions.get("network_stream")
                if stream is not None:
                    self._socket = stream.get_extra_info("socket")
                for line in response.iter_lines():
                    if line.startswith(": connected"):
                        self._connected.set()  # the server has subscribed us
                    elif line.startswith("data:"):
                        with self._lock:
                            self.events.append(json.loads(line.removeprefix("data:")))
                self.ended.set()
        except (httpx.HTTPError, OSError):
            pass  # the stream was closed under us: that is how it ends
        finally:
            self._connected.set()

    def close(self) -> None:
        """Stop reading: shut the socket down so the reader wakes up, then join it."""
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self._client.close()
        assert not self._thread.is_alive(), f"the event reader of {self.user} did not stop"

    def snapshot(self) -> list[Event]:
        with self._lock:
            return list(self.events)

    def wait_for(self, found: Callable[[list[Event]], bool], timeout: float = 15) -> list[Event]:
        """The events received, once `found` holds for them (or after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.snapshot()
            if found(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.05)


def about(event: Event, vm_id: str) -> bool:
    return vm_id in json.dumps(event)


def vm_events(events: list[Event], vm_id: str) -> list[Event]:
    return [e for e in events if e["type"] == "vm" and e["object"] == f"/vms/{vm_id}"]


def task_events(events: list[Event], task_id: str) -> list[Event]:
    return [e for e in events if e["type"] == "task" and e["object"] == f"/tasks/{task_id}"]


def finished(events: list[Event], task_id: str) -> bool:
    return any(e["action"] in ("succeeded", "failed") for e in task_events(events, task_id))


def run(server: Server, client: httpx.Client, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    task = server.wait(client, response.json())
    assert task["state"] == "succeeded", task
    return task


def create(server: Server, client: httpx.Client, name: str) -> dict[str, Any]:
    return run(
        server,
        client,
        client.post(
            "/vms", json={"name": name, "template": TEMPLATE, "vcpus": 1, "memory": 512 * MiB}
        ),
    )


def test_each_user_hears_only_about_what_they_can_view(sqlite_server: Server) -> None:
    server = sqlite_server
    admin = server.client("admin")
    dev = server.add_user("dev")
    server.add_user("nobody")

    with (
        EventStream(server, "admin") as admin_stream,
        EventStream(server, "dev") as dev_stream,
        EventStream(server, "nobody") as nobody_stream,
    ):
        assert admin_stream.content_type.startswith("text/event-stream")

        # The admin makes dev's VM and hands it over, then makes another one.
        made = create(server, admin, "devbox")
        devbox = made["object_id"]
        response = admin.post(
            "/acl", json={"subject": "user:dev", "path": f"/vms/{devbox}", "role": "Developer"}
        )
        assert response.status_code == 201, response.text
        other_task = create(server, admin, "other")
        other = other_task["object_id"]
        # Dev stops their VM.
        stop = run(server, dev, dev.put(f"/vms/{devbox}/state", json={"action": "stop"}))

        dev_events = dev_stream.wait_for(
            lambda events: (
                finished(events, stop["id"])
                and any(e["data"].get("state") == "stopped" for e in vm_events(events, devbox))
            )
        )
        admin_events = admin_stream.wait_for(
            lambda events: (
                finished(events, stop["id"])
                and bool(vm_events(events, devbox))
                and bool(vm_events(events, other))
            )
        )
        time.sleep(1)  # anything that should not arrive has had time to
        dev_events = dev_stream.snapshot()
        nobody_events = nobody_stream.snapshot()

    # Dev: their task, start to end, and their VM changing state.
    actions = [e["action"] for e in task_events(dev_events, stop["id"])]
    assert actions[0] == "created" and actions[-1] == "succeeded", actions
    assert all(e["requester"] == "dev" for e in task_events(dev_events, stop["id"]))
    assert any(e["data"]["state"] == "stopped" for e in vm_events(dev_events, devbox))
    # ... and not one word about the other VM or its task.
    leaks = [e for e in dev_events if about(e, other) or about(e, other_task["id"])]
    assert leaks == [], leaks
    # Nor about devbox's creation, which happened before it was dev's.
    assert task_events(dev_events, made["id"]) == []

    # The admin hears of both VMs and every task.
    assert {e["action"] for e in vm_events(admin_events, devbox)} >= {"created", "updated"}
    assert "created" in {e["action"] for e in vm_events(admin_events, other)}
    for task in (made, other_task, stop):
        assert finished(admin_events, task["id"]), task["kind"]

    # Who can view nothing hears nothing.
    assert [e for e in nobody_events if e["type"] == "vm"] == []
    assert nobody_events == []


def test_the_event_stream_needs_credentials(sqlite_server: Server) -> None:
    with httpx.Client(base_url=f"{sqlite_server.url}/api/v1", trust_env=False) as anonymous:
        response = anonymous.get("/events")
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_stream_follows_access_changes_and_ends_with_its_credential(
    sqlite_server: Server,
) -> None:
    """Access is asked again every second: a user taken out of the group that let them
    view a VM stops hearing of it, and revoking their token ends the stream."""
    server = sqlite_server
    admin = server.client("admin")
    dev = server.add_user("dev")
    vm = create(server, admin, "shared")["object_id"]
    assert admin.post("/groups", json={"name": "team", "members": ["dev"]}).status_code == 201
    entry = {"subject": "group:team", "path": f"/vms/{vm}", "role": "Viewer"}
    assert admin.post("/acl", json=entry).status_code == 201

    with EventStream(server, "dev") as stream:
        stopped = run(server, admin, admin.put(f"/vms/{vm}/state", json={"action": "stop"}))
        seen = stream.wait_for(lambda events: bool(vm_events(events, vm)))
        assert vm_events(seen, vm), "a member of the group hears of the VM"

        assert admin.put("/groups/team/members", json={"members": []}).status_code == 200
        time.sleep(1.2)  # the stream asks again within a second
        heard = len(stream.snapshot())
        run(server, admin, admin.put(f"/vms/{vm}/state", json={"action": "start"}))
        time.sleep(1.5)
        assert [e for e in stream.snapshot()[heard:] if about(e, vm)] == []
        assert stopped["requester"] == "admin"

        token = next(t for t in dev.get("/tokens").json() if t["name"] == "tests")
        assert dev.delete(f"/tokens/{token['id']}").status_code == 204
        assert stream.ended.wait(5), "the stream outlived its token"
        assert "reason" in stream.snapshot()[-1]
