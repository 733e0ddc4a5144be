"""Fixtures for the web pages in a real browser: Debian's chromium driven by Playwright
(sync API: these tests are plain functions, no event loop of their own), a live server
on 127.0.0.1 with users holding each kind of access, and sign-in through the /login page.

Every page a test opened is photographed when the test ends, at 1280x800 and at 390x844,
into `<pytest's base temp>/screenshots/` (the path is printed at the end of the run).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from dockvisor.services import identity
from dockvisor.store.models import AclEntryRow, GroupMember
from tests.api.conftest import Server, create_vm, make_control_plane, serve

CHROMIUM = "/usr/bin/chromium"
WIDE = ViewportSize(width=1280, height=800)
NARROW = ViewportSize(width=390, height=844)
PASSWORDS = {"admin": "admin-password-1", "dev": "dev-password-1", "viewer": "viewer-password-1"}
AXE = "/static/vendor/axe-core/axe.min.js"

_screenshot_dir: Path | None = None


# -- the browser --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's chromium (Playwright's own download is not used; root needs
    --no-sandbox)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup-host.sh installs Debian's chromium")
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    global _screenshot_dir
    folder = tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(exist_ok=True)
    _screenshot_dir = folder
    return folder


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _screenshot_dir is not None and any(_screenshot_dir.iterdir()):
        terminalreporter.write_line(f"web screenshots (1280x800 and 390x844): {_screenshot_dir}")


def photograph(page: Page, folder: Path, stem: str) -> None:
    """The page as it is now, at both widths (full page), then back to the wide one."""
    if page.is_closed():
        return
    for label, size in (("1280x800", WIDE), ("390x844", NARROW)):
        page.set_viewport_size(size)
        page.wait_for_timeout(100)  # let the layout settle
        page.screenshot(path=str(folder / f"{stem}-{label}.png"), full_page=True)
    page.set_viewport_size(WIDE)


# -- the server ---------------------------------------------------------------------------


@dataclass
class WebServer:
    """A live server (test-driver host) with users `admin` (Admin on /), `dev` (in group
    `developers`, which holds Developer on the VM `vm_id`) and `viewer` (Viewer on it)."""

    server: Server
    vm_id: str
    vm_name: str
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def cp(self) -> Any:
        return self.server.cp

    def api(self, user: str) -> Any:
        """An httpx client of the REST API with `user`'s token."""
        return self.server.client(user)

    def audit(self) -> list[Any]:
        """The audit log, newest last."""
        with self.cp.db.read() as session:
            from dockvisor.store.models import AuditRow

            return list(session.query(AuditRow).order_by(AuditRow.seq))


def _users(srv: Server, vm_id: str) -> None:
    with srv.cp.db.session() as session:
        group = identity.create_group(session, "developers")
        for name in ("dev", "viewer"):
            user = identity.create_user(session, name, PASSWORDS[name])
            _, srv.tokens[name] = identity.create_token(session, user, "tests")
            srv.user_ids[name] = user.id
        session.add(GroupMember(group_id=group.id, user_id=srv.user_ids["dev"]))
        path = f"/vms/{vm_id}"
        session.add(AclEntryRow(subject_kind="group", subject_id=group.id, path=path,
                                role="Developer", propagate=True))  # fmt: skip
        session.add(AclEntryRow(subject_kind="user", subject_id=srv.user_ids["viewer"], path=path,
                                role="Viewer", propagate=True))  # fmt: skip
    srv.cp.access.invalidate()


def _web_server(folder: Path) -> Iterator[WebServer]:
    cp = make_control_plane(folder, f"sqlite:///{folder / 'dockvisor.db'}")
    uv, thread, url = serve(cp)
    srv = Server(cp, url)
    srv.add_user("admin", role="Admin", password=PASSWORDS["admin"])
    try:
        with srv.client("admin") as admin:
            vm_id = create_vm(srv, admin, "shared-vm")
        _users(srv, vm_id)
        yield WebServer(srv, vm_id, "shared-vm")
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    """A fresh live server for one test (SQLite; the store is not what these test)."""
    yield from _web_server(tmp_path)


@pytest.fixture(scope="module")
def shared_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """One live server for a module's tests that only look (and change nothing)."""
    yield from _web_server(tmp_path_factory.mktemp("web"))


# -- pages --------------------------------------------------------------------------------


def sign_in(page: Page, name: str, password: str) -> None:
    """Fill and send the /login form the page is on (it must be on it)."""
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


@dataclass
class Browsing:
    """Opens signed-in browser pages for one test; photographs them when it ends."""

    browser: Browser
    base_url: str
    passwords: dict[str, str]
    contexts: list[tuple[str, BrowserContext]] = field(default_factory=list)

    def anonymous(self, label: str = "anonymous") -> Page:
        context = self.browser.new_context(base_url=self.base_url, viewport=WIDE)
        context.set_default_timeout(15_000)
        self.contexts.append((label, context))
        return context.new_page()

    def page(self, user: str, path: str = "/") -> Page:
        """A new browser context signed in as `user` through the /login page, on `path`."""
        page = self.anonymous(user)
        page.goto(f"/login?next={path}")
        sign_in(page, user, self.passwords[user])
        page.wait_for_url(re.compile(rf"^{re.escape(self.base_url)}{re.escape(path)}$"))
        return page


@pytest.fixture
def browsing(
    browser: Browser, web: WebServer, screenshot_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    """Signed-in pages on `web`."""
    yield from _browsing(browser, web.url, web.passwords, screenshot_dir, request)


@pytest.fixture
def shared_browsing(
    browser: Browser, shared_web: WebServer, screenshot_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Browsing]:
    """Signed-in pages on `shared_web`."""
    yield from _browsing(browser, shared_web.url, shared_web.passwords, screenshot_dir, request)


def _browsing(
    browser: Browser,
    url: str,
    passwords: dict[str, str],
    folder: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Browsing]:
    b = Browsing(browser, url, passwords)
    try:
        yield b
    finally:
        test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        for label, context in b.contexts:
            for i, page in enumerate(context.pages):
                suffix = f"-{i}" if i else ""
                try:
                    photograph(page, folder, f"{test}-{label}{suffix}")
                except Exception as exc:  # a failed photo must not hide the test's result
                    print(f"no screenshot of {test}-{label}: {exc}")
            context.close()


def wait_live(page: Page) -> None:
    """Until the page's event stream (htmx's SSE extension, on <body>) is open."""
    page.wait_for_function(
        "() => document.body['htmx-internal-data']?.sseEventSource?.readyState === 1"
    )


def axe_violations(page: Page, base_url: str) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the page as it is (axe is
    served by the site itself: the CSP allows only its own scripts)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(url=f"{base_url}{AXE}")
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [v for v in result if v.get("impact") in ("serious", "critical")]


def vendor_present() -> bool:
    from dockvisor.web import vendor_dir

    return (vendor_dir() / "axe-core" / "axe.min.js").is_file()
