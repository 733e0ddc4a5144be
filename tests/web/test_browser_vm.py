"""The web interface on a real Docker-ready VM (qemu:///system), as its users drive it in
a browser: the admin makes a 2-vCPU 1 GiB VM from the docker-ready template and delegates
it to the developers' group; a developer sees that VM and no other, runs a container
from the Docker tab, takes a snapshot marked clean, removes the container, rolls back to
clean and finds it again, uses an exec terminal in it and the VM's serial console, and
raises the VM's memory live (the admin's open page follows).

One VM for the module (booted once, about 40 s under emulation), made by the first
test; the tests after it follow on from each other, in order, and fail if the VM could
not be made. The server, its data and the VMs are removed even on failure.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from dockvisor.domain.sizes import MiB
from dockvisor.services import identity
from dockvisor.services.runtime import ControlPlane
from dockvisor.store.models import AclEntryRow, GroupMember
from tests.real_server import real_server
from tests.web.conftest import PASSWORDS, Browsing, _browsing

pytestmark = pytest.mark.vm

CONTAINER = "web-c1"
TASK_TIMEOUT = 300_000  # ms: creation waits for the VM's engine; snapshots copy memory


@dataclass
class VmStack:
    cp: ControlPlane
    url: str
    prefix: str
    tokens: dict[str, str] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # VMs to remove at the end
    vm_id: str = ""  # the VM the admin made in the browser
    vm_name: str = ""
    other_id: str = ""  # a VM of the admin's that the developers were not given

    def api(self, user: str) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self.tokens[user]}"},
            timeout=60,
            trust_env=False,
        )

    def need_vm(self) -> None:
        if not self.vm_id:
            pytest.fail("the VM was not made (see test_admin_creates_and_delegates_a_vm)")


@pytest.fixture(scope="module")
def stack(run_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with real_server(tmp_path_factory, "web-vm-server") as server:
        cp = server.cp
        stack = VmStack(cp, server.url, f"{run_prefix}web-{secrets.token_hex(2)}", names=server.vms)
        with cp.db.session() as session:
            group = identity.create_group(session, "developers")
            for name in ("admin", "dev"):
                user = identity.create_user(session, name, PASSWORDS[name])
                _, stack.tokens[name] = identity.create_token(session, user, "tests")
                if name == "admin":
                    session.add(AclEntryRow(subject_kind="user", subject_id=user.id, path="/",
                                            role="Admin", propagate=True))  # fmt: skip
                else:
                    session.add(GroupMember(group_id=group.id, user_id=user.id))
        cp.access.invalidate()
        yield stack


@pytest.fixture
def browsing(
    browser: Browser, stack: VmStack, screenshot_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    yield from _browsing(browser, stack.url, dict(PASSWORDS), screenshot_dir, request)


def submit(page: Page, button: Locator) -> Locator:
    """Click `button`, which starts a task; the task's progress on the page once the task
    has succeeded (a failure shows its error). Found by the id the answer gives it,
    wherever its updates put it."""
    with page.expect_response(
        lambda r: r.request.method in ("POST", "DELETE") and "/ui/" in r.url
    ) as answer:
        button.click()
    found = re.search(r'id="(task-[0-9a-f-]+)"', answer.value.text())
    assert found, f"no task in the answer ({answer.value.status}): {answer.value.text()[:500]}"
    task = page.locator(f"#{found.group(1)}")
    expect(task).to_have_attribute(
        "data-task-state", re.compile("succeeded|failed"), timeout=TASK_TIMEOUT
    )
    if task.get_attribute("data-task-state") == "failed":
        raise AssertionError(f"the task failed: {task.inner_text()}")
    return task


def live_or_after_reload(page: Page, check: Callable[[], None], seconds: float = 15) -> bool:
    """Whether `check` passes on the open page by itself (its event stream) within
    `seconds`; if not, it must pass once the page is reloaded (the change was made, the
    page just did not show it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            check()
            return True
        except AssertionError:
            if time.monotonic() > deadline:
                break
            page.wait_for_timeout(500)
    page.reload()
    page.wait_for_load_state()
    check()
    return False


def confirm_dialogs(page: Page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())


def terminal_text(page: Page, selector: str) -> str:
    """What an xterm.js terminal shows (its buffer, scrollback included)."""
    return str(
        page.evaluate(
            """(selector) => {
                const el = document.querySelector(selector);
                if (!el || !el.dockvisor) return "";
                const buffer = el.dockvisor.term.buffer.active;
                const lines = [];
                for (let i = 0; i < buffer.length; i++)
                    lines.push(buffer.getLine(i).translateToString(true));
                return lines.join("\\n");
            }""",
            selector,
        )
    )


def run_in_terminal(page: Page, selector: str, command: str, expected: str) -> str:
    """Type `command` into the terminal until `expected` appears in it (a shell that
    just started may miss the first keys); what the terminal then shows."""
    deadline = time.monotonic() + 90
    while True:
        page.locator(selector).click()
        page.keyboard.type(command)
        page.keyboard.press("Enter")
        for _ in range(20):
            page.wait_for_timeout(250)
            text = terminal_text(page, selector)
            if expected in text:
                return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{expected!r} never appeared in {selector}:\n{text}")


def container_row(page: Page) -> Locator:
    return page.locator(f'#container-rows tr[data-container="{CONTAINER}"]')


# -- the flow, in order -------------------------------------------------------------------


def test_admin_creates_and_delegates_a_vm(browsing: Browsing, stack: VmStack) -> None:
    name = f"{stack.prefix}-a"
    stack.names += [name, f"{stack.prefix}-other"]
    with stack.api("admin") as api:  # a VM the developers are not given
        body = {"name": f"{stack.prefix}-other", "template": "docker-ready", "vcpus": 1,
                "memory": 512 * MiB, "start": False}  # fmt: skip
        other = api.post("/vms", json=body)
        assert other.status_code == 202, other.text
        stack.other_id = other.json()["object_id"]

    page = browsing.page("admin", "/vms/new")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Template", exact=True).select_option("docker-ready")
    page.get_by_label("vCPUs", exact=True).fill("2")
    page.get_by_label("Memory", exact=True).fill("1GiB")
    submit(page, page.get_by_role("button", name="Create VM"))
    page.get_by_role("link", name="Open the VM").click()
    expect(page.get_by_role("heading", name=f"VM {name}")).to_be_visible()
    stack.vm_id = page.url.rsplit("/", 1)[-1]
    stack.vm_name = name
    expect(page.locator("#vm-state")).to_have_text("running")
    expect(page.locator("#vm-vcpus")).to_contain_text("2")
    expect(page.locator("#vm-memory")).to_contain_text("1GiB")

    form = page.locator("#delegate-form")
    form.get_by_label("User or group").fill("group:developers")
    form.get_by_label("Role").select_option("Developer")
    form.get_by_role("button", name="Delegate").click()
    expect(page.locator("#delegate-result")).to_contain_text("Granted")
    expect(page.locator("#delegate-result")).to_contain_text("Developer")


def test_developer_sees_that_vm_and_no_other(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev")
    rows = page.locator("#vm-rows tr[id^=vm-]")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#vm-{stack.vm_id}")).to_contain_text(stack.vm_name)
    expect(page.locator(f"#vm-{stack.other_id}")).to_have_count(0)
    assert page.goto(f"/vms/{stack.other_id}").status == 404  # type: ignore[union-attr]


def test_developer_runs_a_container_from_the_docker_tab(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    page.get_by_role("link", name="Docker").click()
    expect(page).to_have_url(f"{stack.url}/vms/{stack.vm_id}/docker")
    page.wait_for_load_state()
    form = page.locator("#container-form")
    form.locator("[name=image]").fill("busybox:latest")
    form.locator("[name=name]").fill(CONTAINER)
    form.locator("[name=command]").fill("sh -c 'echo hello-from-web; sleep 3600'")
    form.get_by_role("button", name="Run").click()
    expect(form.locator("[role=status]")).to_contain_text(
        f"{CONTAINER} is running", timeout=120_000
    )
    row = container_row(page)
    live = live_or_after_reload(page, lambda: expect(row).to_contain_text("running", timeout=500))
    assert live, "the container list showed the new container running only after a reload"


def test_developer_takes_a_snapshot_marked_clean(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    form = page.locator("#snapshot-form")
    form.get_by_label("Snapshot name").fill("clean1")
    form.get_by_label("Mark as the clean state").check()
    submit(page, form.get_by_role("button", name="Take snapshot"))

    def shown() -> None:
        expect(page.locator("#rollback-clean")).to_be_visible(timeout=500)
        row = page.locator("#vm-snapshots tr", has_text="clean1")
        expect(row).to_contain_text("clean", timeout=500)

    live = live_or_after_reload(page, shown, seconds=10)
    assert live, "the snapshot list did not update without a reload after the snapshot"


def test_developer_removes_the_container(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}/docker")
    confirm_dialogs(page)
    expect(container_row(page)).to_have_count(1, timeout=60_000)
    container_row(page).get_by_role("button", name="Remove").click()
    expect(container_row(page)).to_have_count(0, timeout=60_000)


def test_developer_rolls_back_to_clean_and_finds_the_container(
    browsing: Browsing, stack: VmStack
) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    confirm_dialogs(page)
    submit(page, page.get_by_role("button", name="Roll back to clean"))
    state = page.locator("#vm-state")
    live = live_or_after_reload(page, lambda: expect(state).to_have_text("running", timeout=500))

    page.get_by_role("link", name="Docker").click()
    page.wait_for_load_state()
    # The engine answers again a little after the revert: until then the list says it
    # does not answer and asks again by itself (no event comes when it is back).
    page.evaluate("window.notReloaded = true")
    expect(container_row(page)).to_contain_text("running", timeout=120_000)
    assert page.evaluate("window.notReloaded === true")
    assert live, "the VM's page still showed it not running after the rollback, until reloaded"


def test_developer_reads_logs_and_uses_an_exec_terminal(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}/docker")
    container_row(page).get_by_role("link", name=CONTAINER).click()
    expect(page).to_have_url(f"{stack.url}/vms/{stack.vm_id}/docker/{CONTAINER}")
    page.wait_for_load_state()
    expect(page.locator("pre#logs")).to_contain_text("hello-from-web", timeout=30_000)
    page.get_by_role("button", name="Open a shell").click()
    expect(page.locator("#exec-terminal")).to_be_visible()
    expect(page.locator("#exec-status")).to_have_text("connected", timeout=30_000)
    run_in_terminal(page, "#exec-terminal", "echo exec-$((6*7))", "exec-42")
    run_in_terminal(page, "#exec-terminal", "hostname", "")  # the shell still answers


def test_developer_runs_a_command_on_the_serial_console(browsing: Browsing, stack: VmStack) -> None:
    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    page.get_by_role("link", name="Console").click()
    expect(page).to_have_url(f"{stack.url}/vms/{stack.vm_id}/console")
    page.wait_for_load_state()  # its script (a module) is what answers the button
    page.locator("#serial-open").click()
    expect(page.locator("#serial-terminal")).to_be_visible()
    expect(page.locator("#serial-status")).to_have_text("connected", timeout=30_000)
    text = run_in_terminal(page, "#serial-terminal", "echo serial-$((6*7)); id -u", "serial-42")
    assert "serial-42" in text


def test_developer_raises_memory_live_and_sees_applied_live(
    browsing: Browsing, stack: VmStack
) -> None:
    stack.need_vm()
    admin = browsing.page("admin", f"/vms/{stack.vm_id}")  # an open page that must follow
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    expect(page.locator("#vm-state")).to_have_text("running")
    form = page.locator("#vm-resize")
    form.get_by_label("Memory").fill("1536MiB")
    submit(page, form.get_by_role("button", name="Apply"))

    def raised(on: Page) -> Callable[[], None]:
        def check() -> None:
            memory = on.locator("#vm-memory")
            expect(memory).to_contain_text("1.5GiB", timeout=500)
            expect(memory).to_contain_text("applied live", timeout=500)
            expect(memory).not_to_contain_text("pending until reboot", timeout=500)

        return check

    live = live_or_after_reload(page, raised(page))
    admin_live = live_or_after_reload(admin, raised(admin), seconds=5)
    assert live and admin_live, (
        f"the new memory was shown only after a reload (developer's page live: {live}, "
        f"admin's page live: {admin_live})"
    )


def test_the_pages_of_the_real_vm_have_no_serious_accessibility_violation(
    browsing: Browsing, stack: VmStack
) -> None:
    from tests.web.conftest import axe_violations

    stack.need_vm()
    page = browsing.page("dev", f"/vms/{stack.vm_id}")
    found: dict[str, Any] = {}
    for path in ("", "/docker", f"/docker/{CONTAINER}", "/console"):
        page.goto(f"/vms/{stack.vm_id}{path}")  # (a container's logs stream: never idle)
        page.wait_for_load_state("load")
        page.wait_for_timeout(1000)
        if violations := axe_violations(page, stack.url):
            found[path or "/"] = [(v["id"], [n["target"] for n in v["nodes"]][:3])
                                  for v in violations]  # fmt: skip
    assert not found, found
