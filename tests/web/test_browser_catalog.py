"""Pulling a template from a catalog in the New VM page, in a real browser (test-driver
host): an admin sees what the catalogs offer and pulls one, following its task; a
developer is shown no catalog and is refused a forged pull."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from tests.catalog.published import catalog_site
from tests.web.conftest import Browsing, WebServer, axe_violations


def test_an_admin_pulls_a_catalog_template_from_the_new_vm_page(
    browsing: Browsing, web: WebServer, tmp_path: Path
) -> None:
    admin = web.server.client("admin")
    with catalog_site(tmp_path) as catalog:
        added = admin.post("/catalogs", json={"name": "acme", "url": catalog.server.url,
                                              "public_key": catalog.public_key})  # fmt: skip
        assert added.status_code == 201, added.text
        page = browsing.page("admin", "/vms/new")
        offers = page.locator("#catalog-templates")
        expect(offers.get_by_role("cell", name="acme:tiny", exact=True)).to_be_visible()
        expect(offers).to_contain_text("256MiB")  # what it needs at least
        assert not axe_violations(page, web.url)
        offers.get_by_role("button", name="Pull acme:tiny:1.0").click()
        expect(offers.locator(".task[data-task-state=succeeded]")).to_be_visible(timeout=20_000)
        names = {t["name"] for t in admin.get("/templates").json()}
        assert "tiny" in names
        page.reload()
        expect(page.get_by_label("Template", exact=True).locator("option", has_text="tiny")
               ).to_have_count(1)  # fmt: skip

        dev = browsing.page("dev", "/vms/new")
        expect(dev.get_by_role("heading", name="New Docker-ready VM")).to_be_visible()
        expect(dev.locator("#catalog-templates")).to_have_count(0)
        forged = dev.request.post(f"{web.url}/ui/templates/pull",
                                  form={"reference": "acme:tiny"})  # fmt: skip
        assert forged.status == 403
