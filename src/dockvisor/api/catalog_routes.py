"""REST routes for template catalogs, pulling templates from them, and keeping warm
spares of templates. Thin: each calls services/catalog_admin.py or spare_admin.py, where
the privilege (Sys.Modify on /; Sys.Audit to list spares) is checked."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.params import P, Who
from dockvisor.api.params import task_out as _task
from dockvisor.domain.catalog import CatalogTemplate
from dockvisor.domain.requirements import Perm
from dockvisor.services.catalog_admin import CatalogAdministration
from dockvisor.services.catalogs import CatalogRecord
from dockvisor.services.runtime import ControlPlane
from dockvisor.services.spare_admin import SpareAdministration

__all__ = ["catalog_router"]

NAMED = Path(pattern=s.NAME, max_length=64)


def _catalog_out(record: CatalogRecord) -> s.CatalogOut:
    return s.CatalogOut(**asdict(record))


def _template_out(catalog: str, t: CatalogTemplate) -> s.CatalogTemplateOut:
    return s.CatalogTemplateOut(
        catalog=catalog,
        name=t.name,
        version=t.version,
        arch=t.arch,
        description=t.description,
        docker_version=t.docker_version,
        docker_port=t.docker_port,
        features=list(t.features),
        sizes=s.TemplateSizesOut(**asdict(t.sizes)),
        min_disk=t.min_disk,
        download_size=sum(f.size for f in t.files.values()),
        published=t.published,
    )


def catalog_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute)
    catalogs = CatalogAdministration(cp)
    spares = SpareAdministration(cp)
    root = declare(Perm("/", P.SYS_MODIFY))

    @api.get("/catalogs", response_model=list[s.CatalogOut], openapi_extra=root)
    def list_catalogs(who: Who) -> list[s.CatalogOut]:
        return [_catalog_out(r) for r in catalogs.list_catalogs(who)]

    @api.post(
        "/catalogs",
        name="catalog.add",
        status_code=201,
        response_model=s.CatalogOut,
        openapi_extra=root,
    )
    def add_catalog(who: Who, body: s.CatalogIn) -> s.CatalogOut:
        record = catalogs.add_catalog(who, name=body.name, url=body.url, public_key=body.public_key)
        return _catalog_out(record)

    @api.delete("/catalogs/{name}", name="catalog.remove", status_code=204, openapi_extra=root)
    def remove_catalog(who: Who, name: Annotated[str, NAMED]) -> Response:
        catalogs.remove_catalog(who, name)
        return Response(status_code=204)

    @api.get(
        "/catalog-templates",
        name="catalog.search",
        response_model=s.CatalogSearchOut,
        openapi_extra=root,
    )
    def search(who: Who, q: Annotated[str, Query(max_length=100)] = "") -> s.CatalogSearchOut:
        found, problems = catalogs.search(who, q)
        return s.CatalogSearchOut(
            templates=[_template_out(c, t) for c, t in found], problems=problems
        )

    @api.post(
        "/templates/pull",
        name="template.pull",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=root,
    )
    def pull(who: Who, body: s.TemplatePull, response: Response) -> s.TaskOut:
        task = catalogs.pull(
            who,
            body.reference,
            as_name=body.as_name,
            host_id=body.host_id,
            all_hosts=body.all_hosts,
        )
        return _task(response, task)

    @api.post(
        "/templates/{name}/update",
        name="template.update",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=root,
    )
    def update(
        who: Who, name: Annotated[str, NAMED], body: s.TemplateUpdate, response: Response
    ) -> s.TaskOut:
        return _task(response, catalogs.update(who, name, host_id=body.host_id))

    @api.post(
        "/templates/{name}/warm",
        name="template.warm",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=root,
    )
    def warm(
        who: Who, name: Annotated[str, NAMED], body: s.TemplateWarm, response: Response
    ) -> s.TaskOut:
        return _task(response, spares.warm(who, name, body.spares, host_id=body.host_id))

    @api.get(
        "/spares",
        name="spare.list",
        response_model=list[s.SpareOut],
        openapi_extra=declare(Perm("/", P.SYS_AUDIT)),
    )
    def list_spares(who: Who) -> list[s.SpareOut]:
        shown = s.SpareOut.model_fields
        return [s.SpareOut(host_id=h, **{k: v for k, v in asdict(x).items() if k in shown})
                for h, x in spares.spares(who)]  # fmt: skip

    return api
