"""REST routes for administration: users, groups, roles, the ACL, API tokens, hosts,
pools, templates and resource sets. Thin: each calls services/admin.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.params import Key, NumericId, P, Who
from dockvisor.domain.model import TemplateSpec
from dockvisor.domain.quota import Limits
from dockvisor.domain.requirements import AnyUser, Perm, Somewhere
from dockvisor.services.admin import Administration, token_expiry
from dockvisor.services.catalogs import DbCatalogBook, newer_version
from dockvisor.services.identity import Principal
from dockvisor.services.runtime import ControlPlane

__all__ = ["admin_router"]


def admin_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute)
    admin = Administration(cp)
    book = DbCatalogBook(cp.db)

    # -- users, groups, roles, ACL, tokens ----------------------------------------------

    @api.get(
        "/users",
        response_model=list[s.UserOut],
        openapi_extra=declare(
            AnyUser("everyone to holders of Sys.Modify or Permissions.Modify on /, else oneself")
        ),
    )
    def list_users(who: Who) -> list[dict[str, Any]]:
        return admin.list_users(who)

    @api.post(
        "/users",
        name="user.create",
        status_code=201,
        response_model=s.UserOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY, note="admin: true is a grant of Admin on /")),
    )
    def create_user(who: Who, body: s.UserCreate) -> dict[str, Any]:
        return admin.create_user(who, body.name, body.password, body.admin)

    @api.delete(
        "/users/{name}",
        name="user.delete",
        status_code=204,
        openapi_extra=declare(
            Perm("/", P.SYS_MODIFY, note="and dominating the user wherever they hold anything")
        ),
    )
    def delete_user(who: Who, name: Key) -> Response:
        admin.delete_user(who, name)
        return Response(status_code=204)

    @api.get(
        "/groups",
        response_model=list[s.GroupOut],
        openapi_extra=declare(
            AnyUser(
                "all groups to holders of Sys.Modify or Permissions.Modify on /, else their own"
            )
        ),
    )
    def list_groups(who: Who) -> list[dict[str, Any]]:
        return admin.list_groups(who)

    @api.post(
        "/groups",
        name="group.create",
        status_code=201,
        response_model=s.GroupOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY)),
    )
    def create_group(who: Who, body: s.GroupCreate) -> dict[str, Any]:
        return admin.create_group(who, body.name, body.members)

    @api.put(
        "/groups/{name}/members",
        name="group.members",
        response_model=s.GroupOut,
        openapi_extra=declare(
            Perm(
                "/",
                P.SYS_MODIFY,
                note=(
                    "each member who joins or leaves is a grant or revocation of every entry of "
                    "the group"
                ),
            )
        ),
    )
    def set_members(who: Who, name: Key, body: s.GroupMembers) -> dict[str, Any]:
        return admin.set_group_members(who, name, body.members)

    @api.delete(
        "/groups/{name}",
        name="group.delete",
        status_code=204,
        openapi_extra=declare(
            Perm(
                "/",
                P.SYS_MODIFY,
                note="every member leaving is a revocation of the group's entries",
            )
        ),
    )
    def delete_group(who: Who, name: Key) -> Response:
        admin.delete_group(who, name)
        return Response(status_code=204)

    @api.get("/roles", response_model=list[s.RoleOut], openapi_extra=declare(AnyUser()))
    def list_roles(who: Who) -> list[dict[str, Any]]:
        return admin.list_roles()

    @api.post(
        "/roles",
        name="role.create",
        status_code=201,
        response_model=s.RoleOut,
        openapi_extra=declare(
            Perm("/", P.PERMISSIONS_MODIFY, note="holding every privilege the role gets")
        ),
    )
    def create_role(who: Who, body: s.RoleCreate) -> dict[str, Any]:
        return admin.create_role(who, body.name, body.privileges, body.description)

    @api.delete(
        "/roles/{name}",
        name="role.delete",
        status_code=204,
        openapi_extra=declare(Perm("/", P.PERMISSIONS_MODIFY)),
    )
    def delete_role(who: Who, name: Key) -> Response:
        admin.delete_role(who, name)
        return Response(status_code=204)

    @api.get(
        "/acl",
        response_model=list[s.AclOut],
        openapi_extra=declare(
            AnyUser("the entries at or below the paths where they hold Permissions.Modify")
        ),
    )
    def list_acl(who: Who) -> list[s.AclOut]:
        return [s.AclOut(**v.__dict__) for v in admin.list_acl(who)]

    @api.post(
        "/acl",
        name="acl.grant",
        status_code=201,
        response_model=s.AclOut,
        openapi_extra=declare(
            Somewhere(
                P.PERMISSIONS_MODIFY,
                note=(
                    "Permissions.Modify on the path, holding every privilege of the role there, "
                    "and dominating any subject the entry narrows"
                ),
            )
        ),
    )
    def grant(who: Who, body: s.AclCreate) -> s.AclOut:
        view = admin.grant(who, body.subject, body.path, body.role, body.propagate)
        return s.AclOut(**view.__dict__)

    @api.delete(
        "/acl/{entry_id}",
        name="acl.revoke",
        status_code=204,
        openapi_extra=declare(
            Somewhere(
                P.PERMISSIONS_MODIFY,
                note=(
                    "Permissions.Modify at or above the entry's path, holding the role there, "
                    "and dominating the subject if it loses privileges"
                ),
            )
        ),
    )
    def revoke(who: Who, entry_id: NumericId) -> Response:
        admin.revoke(who, entry_id)
        return Response(status_code=204)

    @api.get(
        "/tokens",
        response_model=list[s.TokenOut],
        openapi_extra=declare(AnyUser("their own tokens")),
    )
    def list_tokens(who: Who) -> list[s.TokenOut]:
        return [s.TokenOut(**t.__dict__) for t in admin.list_tokens(who)]

    @api.post(
        "/tokens",
        name="token.create",
        status_code=201,
        response_model=s.TokenCreated,
        openapi_extra=declare(AnyUser("their own tokens")),
    )
    def create_token(who: Who, body: s.TokenCreate) -> s.TokenCreated:
        info, secret = admin.create_token(who, body.name, token_expiry(body.expires_in_days))
        return s.TokenCreated(**info.__dict__, token=secret)

    @api.delete(
        "/tokens/{token_id}",
        name="token.revoke",
        status_code=204,
        openapi_extra=declare(AnyUser("their own tokens")),
    )
    def revoke_token(who: Who, token_id: NumericId) -> Response:
        admin.revoke_token(who, token_id)
        return Response(status_code=204)

    # -- hosts, pools, templates, resource sets -----------------------------------------

    @api.get(
        "/hosts",
        response_model=list[s.HostOut],
        openapi_extra=declare(
            AnyUser("the hosts they hold a privilege on or have a resource set on")
        ),
    )
    def list_hosts(who: Who) -> list[dict[str, Any]]:
        return admin.list_hosts(who)

    @api.post(
        "/hosts",
        name="host.add",
        status_code=201,
        response_model=s.HostOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY)),
    )
    def add_host(who: Who, body: s.HostCreate) -> dict[str, Any]:
        return admin.add_host(
            who, body.name, body.uri, user=body.user, password=body.password,
            certificate=body.certificate,
        )  # fmt: skip

    @api.get(
        "/pools",
        response_model=list[s.PoolOut],
        openapi_extra=declare(AnyUser("the pools they hold a privilege on")),
    )
    def list_pools(who: Who) -> list[dict[str, Any]]:
        return admin.list_pools(who)

    @api.post(
        "/pools",
        name="pool.create",
        status_code=201,
        response_model=s.PoolOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY)),
    )
    def create_pool(who: Who, body: s.PoolCreate) -> dict[str, Any]:
        return admin.create_pool(who, body.name)

    @api.get(
        "/templates",
        response_model=list[s.TemplateOut],
        openapi_extra=declare(
            AnyUser(
                "Sys.Modify on / lists all; VM.Allocate on a host its templates; a resource set "
                "the templates it allows"
            )
        ),
    )
    def list_templates(
        who: Who, host_id: Annotated[int | None, Query(ge=1, le=s.MAX_ID)] = None
    ) -> list[s.TemplateOut]:
        return [
            s.TemplateOut.of(hid, t, newer_version(book, t))
            for hid, t in admin.list_templates(who, host_id)
        ]

    @api.post(
        "/templates",
        name="template.add",
        status_code=201,
        response_model=s.TemplateOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY)),
    )
    def add_template(who: Who, body: s.TemplateCreate) -> s.TemplateOut:
        spec = TemplateSpec(
            name=body.name,
            disk=body.disk,
            kernel=body.kernel,
            initrd=body.initrd,
            cmdline=body.cmdline or "",
            docker_port=body.docker_port,
            description=body.description,
        )
        return s.TemplateOut.of(body.host_id, admin.add_template(who, body.host_id, spec))

    def _set_out(view: Any) -> s.ResourceSetOut:
        return s.ResourceSetOut(
            id=view.id,
            name=view.name,
            limits=s.LimitsOut(**view.limits.__dict__),
            usage=s.ResourcesOut(**view.usage.__dict__),
            templates=view.templates,
            host_ids=view.host_ids,
            subjects=view.subjects,
            count_snapshots=view.count_snapshots,
        )

    @api.get(
        "/resource-sets",
        response_model=list[s.ResourceSetOut],
        openapi_extra=declare(
            AnyUser("Sys.Modify on / lists all; others the sets they may allocate in")
        ),
    )
    def list_sets(who: Who) -> list[s.ResourceSetOut]:
        return [_set_out(v) for v in admin.list_resource_sets(who)]

    @api.get(
        "/resource-sets/{set_id}",
        response_model=s.ResourceSetOut,
        openapi_extra=declare(
            AnyUser("Sys.Modify on /, or being able to allocate in the set (else 404)")
        ),
    )
    def get_set(who: Who, set_id: NumericId) -> s.ResourceSetOut:
        return _set_out(admin.get_resource_set(who, set_id))

    def _write_set(
        who: Principal, set_id: NumericId | None, body: s.ResourceSetIn
    ) -> s.ResourceSetOut:
        return _set_out(
            admin.write_resource_set(
                who,
                set_id,
                name=body.name,
                limits=Limits(**body.limits.model_dump()),
                templates=body.templates,
                host_ids=body.host_ids,
                subjects=body.subjects,
                count_snapshots=body.count_snapshots,
            )
        )

    @api.post(
        "/resource-sets",
        name="resource-set.create",
        status_code=201,
        response_model=s.ResourceSetOut,
        openapi_extra=declare(
            Perm(
                "/",
                P.SYS_MODIFY,
                note="subjects: Permissions.Modify, VM.Allocate and Developer on the set",
            )
        ),
    )
    def create_set(who: Who, body: s.ResourceSetIn) -> s.ResourceSetOut:
        return _write_set(who, None, body)

    @api.put(
        "/resource-sets/{set_id}",
        name="resource-set.update",
        response_model=s.ResourceSetOut,
        openapi_extra=declare(
            Perm(
                "/",
                P.SYS_MODIFY,
                note="subjects: Permissions.Modify, VM.Allocate and Developer on the set",
            )
        ),
    )
    def update_set(who: Who, set_id: NumericId, body: s.ResourceSetIn) -> s.ResourceSetOut:
        return _write_set(who, set_id, body)

    @api.delete(
        "/resource-sets/{set_id}",
        name="resource-set.delete",
        status_code=204,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY, note="its subjects: as removing them")),
    )
    def delete_set(who: Who, set_id: NumericId) -> Response:
        admin.delete_resource_set(who, set_id)
        return Response(status_code=204)

    @api.post(
        "/resource-sets/recompute",
        name="resource-set.recompute",
        response_model=s.RecomputeOut,
        openapi_extra=declare(Perm("/", P.SYS_MODIFY)),
    )
    def recompute(who: Who) -> dict[str, Any]:
        return admin.recompute(who)

    return api
