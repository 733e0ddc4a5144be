"""The web pages in a real browser, on a server whose host is libvirt's test driver (no
real VM): signing in and out, an ended session, what a Viewer is shown and refused, live
updates from events made elsewhere, form errors, accessibility (axe-core) and API
tokens."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import delete

from dockvisor.domain.sizes import MiB
from dockvisor.store.models import SessionRow
from tests.api.conftest import TEMPLATE
from tests.web.conftest import NARROW, WIDE, Browsing, WebServer, axe_violations, sign_in, wait_live


def state_of(page: Page, vm_id: str) -> str:
    return page.locator(f"#vm-{vm_id} [data-state]").get_attribute("data-state") or ""


# -- signing in and out ---------------------------------------------------------------------


def test_sign_in_lists_my_vms_and_sign_out_returns_to_login(
    browsing: Browsing, web: WebServer
) -> None:
    with web.api("admin") as api:
        made = api.post(
            "/vms",
            json={"name": "made-by-api", "template": TEMPLATE, "vcpus": 1, "memory": 256 * MiB},
        )
        assert made.status_code == 202, made.text
        new_id = web.server.wait(api, made.json())["object_id"]

    page = browsing.anonymous("admin")
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    sign_in(page, "admin", web.passwords["admin"])
    expect(page).to_have_url(f"{web.url}/")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    rows = page.locator("#vm-rows tr[id^=vm-]")
    expect(rows).to_have_count(2)
    expect(page.locator(f"#vm-{web.vm_id}")).to_contain_text(web.vm_name)
    expect(page.locator(f"#vm-{new_id}")).to_contain_text("made-by-api")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/tasks")  # the session is over: the cookie opens nothing any more
    expect(page).to_have_url(re.compile(r"/login\?next=/tasks$"))


def test_wrong_password_is_refused_on_the_login_page(browsing: Browsing, web: WebServer) -> None:
    page = browsing.anonymous()
    page.goto("/login")
    sign_in(page, "admin", "not-the-password")
    expect(page.locator("#login-error")).to_contain_text("wrong user name or password")
    expect(page.get_by_label("User name")).to_have_attribute("aria-describedby", "login-error")


def test_developer_sees_only_the_vm_delegated_to_their_group(
    browsing: Browsing, web: WebServer
) -> None:
    with web.api("admin") as api:
        made = api.post(
            "/vms",
            json={"name": "not-yours", "template": TEMPLATE, "vcpus": 1, "memory": 256 * MiB},
        )
        web.server.wait(api, made.json())
    page = browsing.page("dev")
    expect(page.locator("#vm-rows tr[id^=vm-]")).to_have_count(1)
    expect(page.locator(f"#vm-{web.vm_id}")).to_contain_text(web.vm_name)
    expect(page.locator("#vm-rows")).not_to_contain_text("not-yours")


def test_an_ended_session_leads_to_sign_in_and_back_to_the_page(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("dev", f"/vms/{web.vm_id}")
    wait_live(page)
    with web.cp.db.session() as session:  # the session ends (expired, or ended elsewhere)
        session.execute(delete(SessionRow).where(SessionRow.user_id == web.server.user_ids["dev"]))
    web.cp.recent_tokens.clear()
    # The open page learns it from its event stream and goes to sign-in by itself.
    expect(page).to_have_url(
        re.compile(rf"/login\?next=%2Fvms%2F{web.vm_id}$|/login\?next=/vms/{web.vm_id}$"),
        timeout=10_000,
    )
    sign_in(page, "dev", web.passwords["dev"])
    expect(page).to_have_url(f"{web.url}/vms/{web.vm_id}")
    expect(page.get_by_role("heading", name=f"VM {web.vm_name}")).to_be_visible()


def test_an_action_after_the_session_ended_leads_to_sign_in(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("dev", f"/vms/{web.vm_id}")
    # Signed out in another tab of the same browser: the cookie is no longer a session.
    other = page.context.new_page()
    other.goto("/tasks")
    other.get_by_role("button", name="Sign out").click()
    expect(other).to_have_url(re.compile(r"/login$"))
    other.close()
    page.get_by_label("Snapshot name").fill("after-logout")
    page.get_by_role("button", name="Take snapshot").click()
    expect(page).to_have_url(re.compile(r"/login\?next="), timeout=10_000)
    sign_in(page, "dev", web.passwords["dev"])
    expect(page).to_have_url(f"{web.url}/vms/{web.vm_id}")
    with web.api("admin") as api:
        names = [s["name"] for s in api.get(f"/vms/{web.vm_id}/snapshots").json()]
    assert "after-logout" not in names


# -- what a Viewer is shown and refused ---------------------------------------------------


def test_viewer_sees_no_action_and_forged_requests_are_refused_and_audited(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("viewer", f"/vms/{web.vm_id}")
    expect(page.locator("#vm-state")).to_have_text("running")
    buttons = page.locator("main button:visible, main input[type=submit]:visible")
    assert buttons.all_inner_texts() == [], buttons.all_inner_texts()
    for form in ("#snapshot-form", "#vm-resize", "#clone-form", "#delegate-form"):
        expect(page.locator(form)).to_have_count(0)
    for word in ("Start", "Shut down", "Snapshot", "Delete", "Delegate", "Roll back", "Clone"):
        expect(page.get_by_role("button", name=word)).to_have_count(0)

    forge = """async ([url, csrf]) => {
        const headers = {"Content-Type": "application/x-www-form-urlencoded"};
        if (csrf) headers["X-CSRF-Token"] = csrf;
        const r = await fetch(url, {method: "POST", headers, body: "action=stop"});
        return r.status;
    }"""
    url = f"/ui/vms/{web.vm_id}/power"
    csrf = page.locator("body").get_attribute("data-csrf")
    assert csrf
    assert page.evaluate(forge, [url, csrf]) in (403, 404)
    assert page.evaluate(forge, [url, ""]) == 403
    assert page.evaluate(forge, [f"/api/v1/vms/{web.vm_id}/state", csrf]) in (403, 404, 405, 422)

    with web.api("admin") as api:
        assert api.get(f"/vms/{web.vm_id}").json()["state"] == "running"
    refused = [e for e in web.audit() if e.result.startswith("refused")]
    with_token = [e for e in refused if e.actor == "viewer" and e.object == f"vm:{web.vm_id}"]
    assert with_token, [(e.actor, e.action, e.object, e.result) for e in refused]
    without = [e for e in refused if e.action == f"POST {url}"]
    assert without, [(e.actor, e.action, e.object, e.result) for e in refused]
    assert "CSRF" in (without[-1].detail or "")


# -- live updates -------------------------------------------------------------------------


def test_events_from_the_api_reach_an_open_overview_without_reload(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("admin")
    wait_live(page)
    page.evaluate("window.notReloaded = true")
    assert state_of(page, web.vm_id) == "running"

    with web.api("dev") as api:  # another user, through the REST API
        started = time.monotonic()
        response = api.put(f"/vms/{web.vm_id}/state", json={"action": "stop"})
        assert response.status_code == 202, response.text
        expect(page.locator(f"#vm-{web.vm_id} [data-state]")).not_to_have_attribute(
            "data-state", "running", timeout=3000
        )
        stopped_after = time.monotonic() - started
        assert web.server.wait(api, response.json())["state"] == "succeeded"

    with web.api("admin") as api:
        started = time.monotonic()
        made = api.post(
            "/vms", json={"name": "live-new", "template": TEMPLATE, "vcpus": 1, "memory": 256 * MiB}
        )
        assert made.status_code == 202, made.text
        expect(page.locator("#vm-rows")).to_contain_text("live-new", timeout=3000)
        created_after = time.monotonic() - started

    assert page.evaluate("window.notReloaded === true")
    print(f"stop seen after {stopped_after * 1000:.0f} ms, creation {created_after * 1000:.0f} ms")
    assert stopped_after < 1.5 and created_after < 1.5, (stopped_after, created_after)


def test_a_change_made_while_a_part_is_being_refreshed_is_shown_after_it(
    browsing: Browsing, web: WebServer
) -> None:
    """A part refreshed by an event while its previous refresh is still on the way: the
    answer in flight (the state before the change) replaces the part, and the newer state
    must follow it; the page must not stay on the older one until reloaded."""
    page = browsing.page("dev", f"/vms/{web.vm_id}")
    wait_live(page)
    page.evaluate("window.notReloaded = true")
    held: list[tuple[Any, Any]] = []
    asked = 0

    def hold(route: Any) -> None:  # the first answered by the server now, delivered later
        nonlocal asked
        asked += 1
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))

    page.route("**/ui/vms/*/snapshots", hold)
    with web.api("admin") as api:
        for name in ("first", "second"):
            taken = api.post(f"/vms/{web.vm_id}/snapshots", json={"name": name})
            assert taken.status_code == 202, taken.text
            assert web.server.wait(api, taken.json())["state"] == "succeeded"
            deadline = time.monotonic() + 5
            while not held:  # the refresh asked by the first snapshot's event is held
                assert time.monotonic() < deadline, "the snapshot did not refresh the page"
                page.wait_for_timeout(100)
    page.wait_for_timeout(1000)  # the second snapshot's event reaches the page meanwhile
    assert asked == 1, "a second refresh went out while the first was on the way"
    route, answer = held[0]
    assert "second" not in answer.text()
    route.fulfill(response=answer)

    snapshots = page.locator("#vm-snapshots")
    expect(snapshots).to_contain_text("first", timeout=3000)
    expect(snapshots).to_contain_text("second", timeout=3000)
    assert page.evaluate("window.notReloaded === true")


def test_a_container_list_asks_no_more_when_its_vm_has_no_docker(
    browsing: Browsing, web: WebServer
) -> None:
    """A list whose engine does not answer for a while asks again every 5 s (the real-VM
    rollback test sees it come back); a VM without Docker (the test driver's) will not
    have one: its list says so and asks nothing more."""
    page = browsing.page("dev", f"/vms/{web.vm_id}/docker")
    rows = page.locator("#container-rows")
    expect(rows).to_contain_text("has no Docker engine")
    expect(rows).not_to_contain_text("asked again")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/containers" in r.url else None)
    page.wait_for_timeout(6000)
    assert requests == [], "a list whose VM has no Docker keeps asking"


def test_events_on_a_vm_the_user_may_not_view_do_not_reach_them(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("dev")
    wait_live(page)
    page.evaluate(
        "window.swaps = 0; document.body.addEventListener('htmx:afterSwap', () => swaps++)"
    )
    with web.api("admin") as api:
        made = api.post(
            "/vms", json={"name": "hidden", "template": TEMPLATE, "vcpus": 1, "memory": 256 * MiB}
        )
        web.server.wait(api, made.json())
    page.wait_for_timeout(1500)
    expect(page.locator("#vm-rows")).not_to_contain_text("hidden")
    assert page.evaluate("window.swaps") == 0


# -- forms --------------------------------------------------------------------------------


def test_new_vm_form_shows_errors_next_to_their_fields_and_creates_nothing(
    browsing: Browsing, web: WebServer
) -> None:
    with web.api("admin") as api:
        before = len(api.get("/vms").json())
    page = browsing.page("admin", "/vms/new")
    page.get_by_label("Name", exact=True).fill("too-big")
    page.get_by_label("Memory", exact=True).fill("lots")
    page.get_by_role("button", name="Create VM").click()
    memory = page.locator("#vm-memory")
    expect(memory).to_have_attribute("aria-invalid", "true")
    expect(memory).to_have_attribute("aria-describedby", "vm-memory-error")
    expect(page.locator("#vm-memory-error")).to_be_visible()
    expect(page.locator("#vm-memory-error")).to_contain_text("lots")
    expect(page.locator("#vm-vcpus")).not_to_have_attribute("aria-invalid", "true")
    expect(page.locator("#vm-name")).to_have_value("too-big")  # what was typed is kept

    memory.fill("1GiB")
    page.get_by_label("vCPUs", exact=True).fill("1000")
    page.get_by_role("button", name="Create VM").click()
    vcpus = page.locator("#vm-vcpus")
    expect(vcpus).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#vm-vcpus-error")).to_contain_text("vCPU")
    expect(page.locator("#vm-memory")).not_to_have_attribute("aria-invalid", "true")

    with web.api("admin") as api:
        assert len(api.get("/vms").json()) == before


def test_after_an_error_the_keyboard_is_on_the_field_concerned(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("admin", "/vms/new")
    page.get_by_label("Name", exact=True).fill("focus")
    page.get_by_label("Memory", exact=True).fill("lots")
    page.get_by_role("button", name="Create VM").click()
    expect(page.locator("#vm-memory")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#vm-memory")).to_be_focused()


def test_new_vm_form_creates_a_vm_and_follows_its_task(browsing: Browsing, web: WebServer) -> None:
    page = browsing.page("admin", "/vms/new")
    page.get_by_label("Name", exact=True).fill("from-the-form")
    page.get_by_label("Template", exact=True).select_option(TEMPLATE)
    page.get_by_label("vCPUs", exact=True).fill("2")
    page.get_by_label("Memory", exact=True).fill("1GiB")
    page.get_by_role("button", name="Create VM").click()
    expect(page.locator(".task[data-task-state=succeeded]")).to_be_visible(timeout=15_000)
    page.get_by_role("link", name="Open the VM").click()
    expect(page.get_by_role("heading", name="VM from-the-form")).to_be_visible()
    expect(page.locator("#vm-vcpus")).to_contain_text("2")
    expect(page.locator("#vm-memory")).to_contain_text("1GiB")


# -- accessibility ------------------------------------------------------------------------

PAGES = ["/login", "/", "/vms/new", "/vms/{vm}", "/tasks", "/audit", "/tokens", "/access",
         "/resource-sets"]  # fmt: skip


@pytest.mark.parametrize("width", ["1280", "390"])
@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_serious_accessibility_violation(
    shared_browsing: Browsing, shared_web: WebServer, path: str, width: str
) -> None:
    path = path.format(vm=shared_web.vm_id)
    page = shared_browsing.anonymous() if path == "/login" else shared_browsing.page("admin")
    page.set_viewport_size(WIDE if width == "1280" else NARROW)
    response = page.goto(path)
    assert response is not None
    assert response.ok, (path, response.status)
    page.wait_for_load_state("networkidle")
    violations = axe_violations(page, shared_web.url)
    assert not violations, [
        (v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:5]) for v in violations
    ]


# -- API tokens ---------------------------------------------------------------------------


def test_a_token_is_shown_once_works_until_revoked(browsing: Browsing, web: WebServer) -> None:
    page = browsing.page("dev", "/tokens")
    page.get_by_label("Name").fill("ci-runner")
    page.get_by_label("Expires in (days)").fill("7")
    page.get_by_role("button", name="Create token").click()
    secret_box = page.locator("#new-token")
    expect(secret_box).to_be_visible()
    secret = secret_box.input_value()
    assert len(secret) >= 20
    row = page.locator("#token-rows tr", has_text="ci-runner")
    expect(row).to_have_count(1)
    expiry = (datetime.now(UTC) + timedelta(days=7)).strftime("%Y-%m-%d")
    expect(row).to_contain_text(expiry)

    def api_status() -> int:
        with httpx.Client(base_url=f"{web.url}/api/v1", trust_env=False) as client:
            headers = {"Authorization": f"Bearer {secret}"}
            return client.get(f"/vms/{web.vm_id}", headers=headers).status_code

    assert api_status() == 200

    page.reload()  # shown once: never again
    expect(page.locator("#new-token")).to_have_count(0)
    assert secret not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.request.method == "DELETE") as answer:
        row.get_by_role("button", name="Revoke").click()
    assert answer.value.ok, answer.value.status
    web.cp.recent_tokens.clear()
    assert api_status() == 401
    # The list says so at once: the token is gone from it, or marked revoked.
    revoked = page.locator("#token-rows tr", has_text="ci-runner")
    expect(revoked.filter(has_not_text="revoked")).to_have_count(0)


def test_token_form_refuses_a_bad_expiry_next_to_the_field(
    browsing: Browsing, web: WebServer
) -> None:
    page = browsing.page("dev", "/tokens")
    page.get_by_label("Name").fill("bad-expiry")
    page.get_by_label("Expires in (days)").fill("forever")
    page.get_by_role("button", name="Create token").click()
    expect(page.locator("#token-days")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#token-days-error")).to_be_visible()
    expect(page.locator("#token-rows")).not_to_contain_text("bad-expiry")
