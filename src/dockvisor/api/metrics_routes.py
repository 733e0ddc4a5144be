"""REST routes for metrics: a VM's graphs over the last hour, its containers' CPU and
memory now. Thin: each calls services/metrics.py.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from dockvisor.api import schemas as s
from dockvisor.api.declared import DeclaredRoute, declare
from dockvisor.api.docker_routes import needs
from dockvisor.api.params import Key, P, Who
from dockvisor.domain.requirements import Perm
from dockvisor.services.metrics import MAX_MINUTES
from dockvisor.services.runtime import ControlPlane

__all__ = ["metrics_router"]

Container = Annotated[str, PathParam(pattern=s.CONTAINER_NAME)]


def metrics_router(cp: ControlPlane) -> APIRouter:
    api = APIRouter(route_class=DeclaredRoute, tags=["metrics"])
    metrics = cp.metrics

    @api.get(
        "/vms/{vm_id}/metrics",
        response_model=s.VmMetricsOut,
        openapi_extra=declare(Perm("/vms/{vm_id}", P.VM_VIEW)),
    )
    def vm_metrics(
        who: Who,
        vm_id: Key,
        minutes: Annotated[int, Query(ge=1, le=MAX_MINUTES)] = MAX_MINUTES,
    ) -> s.VmMetricsOut:
        """CPU, memory, disk and network of the VM, sampled by the server from the
        hypervisor every `period` seconds, over the last `minutes`."""
        found = metrics.vm_metrics(who, vm_id, minutes=minutes)
        return s.VmMetricsOut(period=found.period, series=s.MetricsSeries(**found.series))

    @api.get(
        "/vms/{vm_id}/docker/usage",
        response_model=list[s.ContainerUsageOut],
        openapi_extra=needs("Docker.View"),
    )
    def containers_usage(who: Who, vm_id: Key) -> list[dict[str, Any]]:
        """CPU and memory of each running container of the VM (about a second: the
        engine measures CPU over that time)."""
        return metrics.containers_usage(who, vm_id)

    @api.get(
        "/vms/{vm_id}/docker/containers/{container}/usage",
        response_model=s.ContainerUsageOut,
        openapi_extra=needs("Docker.View"),
    )
    def container_usage(who: Who, vm_id: Key, container: Container) -> dict[str, Any]:
        """CPU and memory of one container now, as `docker stats` shows them."""
        return metrics.container_usage(who, vm_id, container)

    return api
