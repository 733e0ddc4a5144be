"""Warm spares of a template: how many a host keeps, made and removed here.

A spare is booted with an identity of its own (its engine certificate is issued here,
like any VM's), saved once its Docker engine is up, and waits stopped until a create
adopts it (vms.create_vm_from_template). Its size: the template's smallest (vCPUs,
memory) with room to grow live to the host's most vCPUs per VM and twice the template's
default memory, and the template's default disk; an adopting create plugs the asked
vCPUs and memory in live and grows the disk. A VM asked larger than that, or with
maximums of its own, boots cold.

What spares cost is the host's, never a user's: each holds its disk overlay and saved
memory on the host's storage (`template spares` shows the bytes) and booting one takes a
host CPU for about half a minute (under TCG).
"""

from __future__ import annotations

from dockvisor.domain.model import Capability, Spare, Template, VMSpec
from dockvisor.domain.naming import new_spare_name
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.domain.sizing import MIN_MEMORY, plan_size
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.errors import InvalidInput, Unsupported
from dockvisor.services.engines import EngineAccess

__all__ = ["MAX_SPARES", "spare_spec", "spares_of", "warm_template"]

MAX_SPARES = 32


def spares_of(driver: HypervisorDriver, template: str | None = None) -> list[Spare]:
    return [s for s in driver.list_spares() if template is None or s.template == template]


def spare_spec(driver: HypervisorDriver, template: Template, name: str,
               engines: EngineAccess) -> VMSpec:  # fmt: skip
    host = driver.host_info()
    sizes = template.sizes
    low = max(sizes.min_memory or 0, MIN_MEMORY)
    default = sizes.default_memory or max(low, GiB)
    size = plan_size(host, vcpus=sizes.min_vcpus or 1, memory=low,
                     max_vcpus=host.max_vcpus_per_vm,
                     max_memory=min(host.memory // MiB * MiB, max(2 * default, low)))  # fmt: skip
    return VMSpec(
        name=name,
        template=template.name,
        vcpus=size.vcpus,
        memory=size.memory,
        max_vcpus=size.max_vcpus,
        max_memory=size.max_memory,
        guest=engines.guest_config(name) if template.docker_ready else None,
        disk_size=max(template.disk_size, sizes.default_disk or 0),
    )


def warm_template(
    driver: HypervisorDriver,
    template: str,
    spares: int,
    *,
    progress: Progress = no_progress,
    engines: EngineAccess | None = None,
) -> list[Spare]:
    """Make the host keep `spares` ready spares of `template`: boot and save the missing
    ones (one after the other), delete the extra ones and any that no longer match
    (listing removes those). The template's spares afterwards."""
    if not 0 <= spares <= MAX_SPARES:
        raise InvalidInput(f"spares must be 0 to {MAX_SPARES} (got {spares})")
    tmpl = driver.get_template(template)
    if spares and Capability.WARM_SPARES not in driver.capabilities:
        raise Unsupported(f"host {driver.uri} cannot keep warm spares: its VMs boot cold")
    engines = engines or EngineAccess.default()
    have = [s for s in spares_of(driver, template) if s.ready]
    for extra in have[spares:]:
        driver.delete_spare(extra.name)
    missing = max(0, spares - len(have))
    for i in range(missing):
        name = new_spare_name()
        spec = spare_spec(driver, tmpl, name, engines)

        def step(what: str, fraction: float, i: int = i) -> None:
            progress(f"spare {i + 1} of {missing}: {what}", (i + fraction) / missing)

        driver.create_spare(spec, progress=step)
    progress("warm", 1.0)
    return spares_of(driver, template)
