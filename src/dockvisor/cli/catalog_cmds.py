"""`dockvisor template publish|search|pull|update` and `template catalog add|list|rm`.

Without --server the catalogs are this user's (cli/catalog_book.py) and templates are
pulled onto the hypervisor of --hypervisor; with --server they are the server's, and
pulls and updates are its tasks (Sys.Modify on /).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import click

from dockvisor.catalogs.publish import load_or_create_signing_key
from dockvisor.cli import render
from dockvisor.cli.backends import ApiClient
from dockvisor.cli.catalog_book import FileCatalogBook, default_book_path, record_data
from dockvisor.domain.catalog import CatalogTemplate
from dockvisor.domain.model import Template
from dockvisor.drivers.base import HypervisorDriver, Progress
from dockvisor.services import catalogs as catalog_service
from dockvisor.services import templates as template_service

__all__ = ["newer_versions", "register"]


class Catalogs(Protocol):
    def catalogs(self) -> list[dict[str, Any]]: ...
    def add(self, name: str, url: str, key: str) -> dict[str, Any]: ...
    def remove(self, name: str) -> None: ...
    def search(self, text: str) -> tuple[list[dict[str, Any]], list[str]]: ...
    def pull(self, reference: str, as_name: str | None, host: int | None, all_hosts: bool,
             progress: Progress) -> dict[str, Any]: ...  # fmt: skip
    def update(self, name: str, host: int | None, progress: Progress) -> dict[str, Any]: ...


def _template_data(catalog: str, t: CatalogTemplate) -> dict[str, Any]:
    return {
        "catalog": catalog,
        "name": t.name,
        "version": t.version,
        "arch": t.arch,
        "description": t.description,
        "docker_version": t.docker_version,
        "docker_port": t.docker_port,
        "features": list(t.features),
        "sizes": t.sizes.__dict__,
        "min_disk": t.min_disk,
        "download_size": sum(f.size for f in t.files.values()),
        "published": t.published.isoformat(),
    }


class LocalCatalogs:
    def __init__(self, driver: HypervisorDriver, book: FileCatalogBook) -> None:
        self.driver = driver
        self.book = book

    def catalogs(self) -> list[dict[str, Any]]:
        return [record_data(r) for r in self.book.all()]

    def add(self, name: str, url: str, key: str) -> dict[str, Any]:
        record = catalog_service.add_catalog(self.book, name=name, url=url, public_key=key)
        return record_data(record)

    def remove(self, name: str) -> None:
        self.book.remove(name)

    def search(self, text: str) -> tuple[list[dict[str, Any]], list[str]]:
        found, problems = catalog_service.search_catalogs(self.book, text)
        return [_template_data(c, t) for c, t in found], problems

    def pull(self, reference: str, as_name: str | None, host: int | None, all_hosts: bool,
             progress: Progress) -> dict[str, Any]:  # fmt: skip
        if host is not None or all_hosts:
            raise click.UsageError("--host and --all-hosts need --server")
        (pulled,) = catalog_service.pull_template(
            [self.driver], self.book, reference, as_name=as_name, progress=progress
        )
        return {
            "template": pulled.name,
            "version": pulled.origin.version if pulled.origin else None,
        }

    def update(self, name: str, host: int | None, progress: Progress) -> dict[str, Any]:
        if host is not None:
            raise click.UsageError("--host needs --server")
        template, changed = catalog_service.update_template(
            self.driver, self.book, name, progress=progress
        )
        version = template.origin.version if template.origin else None
        return {"template": name, "version": version, "changed": changed}


class RemoteCatalogs:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    def catalogs(self) -> list[dict[str, Any]]:
        return list(self.api.request("GET", "/catalogs"))

    def add(self, name: str, url: str, key: str) -> dict[str, Any]:
        body = {"name": name, "url": url, "public_key": key}
        return dict(self.api.request("POST", "/catalogs", json=body))

    def remove(self, name: str) -> None:
        self.api.request("DELETE", f"/catalogs/{name}")

    def search(self, text: str) -> tuple[list[dict[str, Any]], list[str]]:
        data = self.api.request("GET", "/catalog-templates", params={"q": text})
        return data["templates"], data["problems"]

    def pull(self, reference: str, as_name: str | None, host: int | None, all_hosts: bool,
             progress: Progress) -> dict[str, Any]:  # fmt: skip
        body = {"reference": reference, "as_name": as_name, "host_id": host,
                "all_hosts": all_hosts}  # fmt: skip
        task = self.api.request("POST", "/templates/pull", json=body)
        return dict(self.api.follow(task, progress))

    def update(self, name: str, host: int | None, progress: Progress) -> dict[str, Any]:
        task = self.api.request("POST", f"/templates/{name}/update", json={"host_id": host})
        return dict(self.api.follow(task, progress))


def _catalogs(ctx: click.Context) -> Catalogs:
    root: Any = ctx.find_root().obj
    if root.server:
        backend: Any = root.backend
        return RemoteCatalogs(backend.api)
    return LocalCatalogs(root.driver, FileCatalogBook())


def newer_versions(ctx: click.Context, templates: list[Template]) -> dict[str, str]:
    """Template name -> the newer version its catalog offered at its last fetch."""
    root: Any = ctx.find_root().obj
    if root.server:
        backend: Any = root.backend
        listed = backend.api.request("GET", "/templates")
        return {t["name"]: t["newer_version"] for t in listed if t.get("newer_version")}
    book = FileCatalogBook()
    found = {t.name: catalog_service.newer_version(book, t) for t in templates}
    return {name: version for name, version in found.items() if version}


def _root(ctx: click.Context) -> Any:
    return ctx.find_root().obj


def _when(text: str | None) -> str:
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M") if text else "never"


@click.group("catalog")
def catalog() -> None:
    """Template catalogs: signed static sites to pull Docker-ready templates from."""


@catalog.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--key", required=True, help="The publisher's public key (ed25519:BASE64).")
@click.pass_context
def catalog_add(ctx: click.Context, name: str, url: str, key: str) -> None:
    """Add a catalog, once it answers with an index signed by KEY."""
    added = _catalogs(ctx).add(name, url, key)
    offered = ", ".join(sorted(added["newest"])) or "no template yet"
    _root(ctx).emit(added, f"catalog {name} added ({url}): {offered}")


@catalog.command("list")
@click.pass_context
def catalog_list(ctx: click.Context) -> None:
    """List catalogs."""
    found = _catalogs(ctx).catalogs()
    rows = [[c["name"], c["url"], c["public_key"], _when(c["fetched"]),
             str(len(c["newest"]))] for c in found]  # fmt: skip
    _root(ctx).emit(found, lambda: render.table(
        ["NAME", "URL", "KEY", "LAST FETCHED (UTC)", "TEMPLATES"], rows))  # fmt: skip


@catalog.command("rm")
@click.argument("name")
@click.pass_context
def catalog_rm(ctx: click.Context, name: str) -> None:
    """Forget a catalog (templates pulled from it stay)."""
    _catalogs(ctx).remove(name)
    _root(ctx).emit({"removed": name}, f"catalog {name} removed")


@click.command("search")
@click.argument("text", default="")
@click.pass_context
def search(ctx: click.Context, text: str) -> None:
    """Templates the catalogs offer (whose name or description has TEXT)."""
    catalogs = _catalogs(ctx)
    found, problems = catalogs.search(text)
    for problem in problems:
        click.echo(f"warning: {problem}", err=True)

    def human() -> str:
        if found:
            return render.catalog_rows(found)
        if not catalogs.catalogs():
            return (
                "no catalog yet: add one with `dockvisor template catalog add NAME URL --key KEY`"
            )
        return f"no template matches {text!r}" if text else "the catalogs offer no template"

    _root(ctx).emit({"templates": found, "problems": problems}, human)


@click.command("pull")
@click.argument("reference", metavar="CATALOG:NAME[:VERSION]")
@click.option("--as", "as_name", help="Register it under this name [its catalog name].")
@click.option("--host", type=int, help="With --server: the host to put it on [the first].")
@click.option("--all-hosts", is_flag=True, help="With --server: put it on every host.")
@click.pass_context
def pull(ctx: click.Context, reference: str, as_name: str | None, host: int | None,
         all_hosts: bool) -> None:  # fmt: skip
    """Download a template (resuming an interrupted download), check its size, checksum
    and signature, and register it."""
    with _root(ctx).progress(f"pull {reference}") as bar:
        result = _catalogs(ctx).pull(reference, as_name, host, all_hosts, bar)
    _root(ctx).emit(result, f"template {result['template']} {result['version']} pulled")


@click.command("update")
@click.argument("name")
@click.option("--host", type=int, help="With --server: the host whose template to update.")
@click.pass_context
def update(ctx: click.Context, name: str, host: int | None) -> None:
    """Replace a pulled template by its catalog's newest version (VMs made from the old
    one are not touched)."""
    with _root(ctx).progress(f"update {name}") as bar:
        result = _catalogs(ctx).update(name, host, bar)
    said = "updated to" if result["changed"] else "is up to date:"
    _root(ctx).emit(result, f"template {name} {said} {result['version']}")


@click.command("publish")
@click.argument("name")
@click.option(
    "--to",
    "directory",
    required=True,
    type=click.Path(file_okay=False),
    help="The catalog directory (made if absent; serve it with any web server).",
)
@click.option("--key", "key_path", type=click.Path(dir_okay=False),
              default=lambda: str(default_book_path().with_name("catalog-signing.key")),
              show_default="~/.config/dockvisor/catalog-signing.key",
              help="The ed25519 signing key (made if absent).")  # fmt: skip
@click.option("--version", "version", help="Its version [the time now: YYYYMMDD_HHMMSS].")
@click.option("--description", help="One line [the template's own].")
@click.pass_context
def publish(ctx: click.Context, name: str, directory: str, key_path: str,
            version: str | None, description: str | None) -> None:  # fmt: skip
    """Write template NAME of the hypervisor into a catalog directory, signed."""
    root = _root(ctx)
    root.local_only("template publish")
    with root.progress(f"publish {name}") as bar:
        published = template_service.publish_template(
            root.driver, name, Path(directory), signing_key=Path(key_path), version=version,
            description=description, progress=bar,
        )  # fmt: skip
    _, public = load_or_create_signing_key(Path(key_path))
    data = {"template": _template_data("", published), "directory": directory,
            "public_key": public}  # fmt: skip
    root.emit(data, f"template {name} {published.version} published in {directory}\n"
                    f"its catalog's key: {public}")  # fmt: skip


def register(template: click.Group) -> None:
    """Add these commands to the `template` group."""
    for command in (catalog, search, pull, update, publish):
        template.add_command(command)
