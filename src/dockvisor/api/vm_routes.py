"""REST routes for VMs: create, read, power, resize, snapshots, clone and the Docker
endpoint. Thin: each calls services/operations.py; hypervisor work answers 202 with
the task that does it (Location: /api/v1/tasks/ID).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.params import Key, P, Who
from dockvisor.api.params import task_out as _task
from dockvisor.domain.requirements import AnyUser, Perm, Somewhere
from dockvisor.services.inventory import vm_data
from dockvisor.services.runtime import ControlPlane

__all__ = ["vm_router"]


def vm_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute)
    ops = cp.ops

    # -- VMs ----------------------------------------------------------------------------

    @api.get(
        "/vms",
        response_model=list[s.VmOut],
        openapi_extra=declare(AnyUser("the VMs they hold VM.View on")),
    )
    def list_vms(who: Who) -> Response:
        # Thousands of rows for an admin: sent as built (services/inventory.py VM_FIELDS,
        # the VmOut schema), not validated again one by one.
        return Response(json.dumps(ops.list_vms(who)), media_type="application/json")

    @api.post(
        "/vms",
        name="vm.create",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(
            Somewhere(
                P.VM_ALLOCATE,
                note=(
                    "VM.Allocate on the host (and pool) the request names, or being able to "
                    "allocate in its resource set"
                ),
            )
        ),
    )
    def create_vm(who: Who, body: s.VmCreate, response: Response) -> s.TaskOut:
        _, task = ops.create_vm(who, **body.model_dump())
        return _task(response, task)

    @api.get(
        "/vms/{vm_id}",
        response_model=s.VmOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_VIEW)),
    )
    def get_vm(who: Who, vm_id: Key) -> dict[str, Any]:
        return vm_data(ops.vm_row(who, vm_id))

    @api.delete(
        "/vms/{vm_id}",
        name="vm.delete",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_DELETE)),
    )
    def delete_vm(
        who: Who, vm_id: Key, response: Response, force: Annotated[bool, Query()] = False
    ) -> s.TaskOut:
        return _task(response, ops.delete_vm(who, vm_id, force=force))

    @api.put(
        "/vms/{vm_id}/state",
        name="vm.power",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_POWER_MGMT)),
    )
    def set_state(who: Who, vm_id: Key, body: s.VmState, response: Response) -> s.TaskOut:
        return _task(response, ops.set_power(who, vm_id, body.action))

    @api.patch(
        "/vms/{vm_id}",
        name="vm.resize",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(
            Perm(
                "/vms/{vm_id}",
                P.VM_CONFIG_CPU,
                P.VM_CONFIG_MEMORY,
                P.VM_CONFIG_DISK,
                any_of=True,
                note="VM.Config.CPU to change vCPUs, VM.Config.Memory to change memory, "
                "VM.Config.Disk to grow the disk (outside a resource set also VM.Allocate "
                "on the host)",
            )
        ),
    )
    def resize(who: Who, vm_id: Key, body: s.VmResize, response: Response) -> s.TaskOut:
        return _task(
            response,
            ops.resize_vm(who, vm_id, vcpus=body.vcpus, memory=body.memory, disk=body.disk),
        )

    @api.get(
        "/vms/{vm_id}/snapshots",
        response_model=list[s.SnapshotOut],
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_VIEW)),
    )
    def list_snapshots(who: Who, vm_id: Key) -> list[s.SnapshotOut]:
        return [
            s.SnapshotOut(
                name=x.name,
                created=x.created,
                power_state=x.power_state.value,
                with_memory=x.with_memory,
                description=x.description,
                parent=x.parent,
                current=x.current,
                disk_size=x.disk_size,
            )
            for x in ops.list_snapshots(who, vm_id)
        ]

    @api.post(
        "/vms/{vm_id}/snapshots",
        name="vm.snapshot",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_SNAPSHOT)),
    )
    def snapshot(who: Who, vm_id: Key, body: s.SnapshotCreate, response: Response) -> s.TaskOut:
        return _task(
            response, ops.snapshot_vm(who, vm_id, body.name, body.description, clean=body.clean)
        )

    @api.post(
        "/vms/{vm_id}/snapshots/{name}/revert",
        name="vm.revert",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(
            Perm(
                "/vms/{vm_id}",
                P.VM_SNAPSHOT_ROLLBACK,
                note="and VM.PowerMgmt if the revert would start the VM",
            )
        ),
    )
    def revert(who: Who, vm_id: Key, name: Key, response: Response) -> s.TaskOut:
        return _task(response, ops.revert_vm(who, vm_id, name))

    @api.delete(
        "/vms/{vm_id}/snapshots/{name}",
        name="vm.snapshot.delete",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_SNAPSHOT)),
    )
    def delete_snapshot(who: Who, vm_id: Key, name: Key, response: Response) -> s.TaskOut:
        return _task(response, ops.delete_snapshot(who, vm_id, name))

    @api.put(
        "/vms/{vm_id}/clean-snapshot",
        name="vm.clean-snapshot",
        response_model=s.VmOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_SNAPSHOT)),
    )
    def mark_clean(who: Who, vm_id: Key, body: s.CleanSnapshot) -> dict[str, Any]:
        """Mark one of the VM's snapshots as its clean state (the web page's "Roll back
        to clean"), or none with `{"name": null}`."""
        return ops.mark_clean(who, vm_id, body.name)

    @api.post(
        "/vms/{vm_id}/clone",
        name="vm.clone",
        status_code=202,
        response_model=s.TaskOut,
        openapi_extra=declare(
            Perm(
                "/vms/{vm_id}",
                P.VM_CLONE,
                note="and VM.Allocate on its host if it is in no resource set",
            )
        ),
    )
    def clone(who: Who, vm_id: Key, body: s.VmClone, response: Response) -> s.TaskOut:
        _, task = ops.clone_vm(who, vm_id, name=body.name, full=body.full, start=body.start)
        return _task(response, task)

    @api.get(
        "/vms/{vm_id}/endpoint",
        response_model=s.EndpointOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.DOCKER_VIEW)),
    )
    def endpoint(who: Who, vm_id: Key) -> s.EndpointOut:
        e = ops.docker_endpoint(who, vm_id)
        return s.EndpointOut(docker_host=e.docker_host, host=e.host, port=e.port, tls=e.tls)

    return api
