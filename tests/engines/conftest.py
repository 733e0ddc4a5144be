"""A real Docker engine in a real VM: one VM of the Docker-ready template per module.

Tests get their engine client only through `engine_for`, the one place that knows how
dockvisor reaches a VM's engine (plain HTTP, or mutual TLS with the engine's name).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import suppress

import pytest

from dockvisor.domain.sizes import GiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.engines.docker import DockerEngine
from dockvisor.errors import DockvisorError
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.engines import EngineAccess

# Every container a test makes carries this label; each test's teardown removes them.
TEST_LABEL = "dockvisor.test"


def engine_for(driver: LibvirtDriver, vm_name: str) -> DockerEngine:
    """The client of a VM's engine, as dockvisor itself makes it."""
    return EngineAccess.default().engine(driver.docker_endpoint(vm_name))


@pytest.fixture(scope="module")
def driver() -> Iterator[LibvirtDriver]:
    drv = LibvirtDriver("qemu:///system")
    yield drv
    drv.close()


@pytest.fixture(scope="module")
def vm_name(driver: LibvirtDriver) -> Iterator[str]:
    """One running Docker-ready VM for the module, deleted afterwards even on failure."""
    _, template = template_service.build_builtin_template(driver)
    name = f"dvt-eng-{secrets.token_hex(3)}"
    try:
        vm_service.create_vm_from_template(
            driver, name=name, template=template.name, vcpus=2, memory=1 * GiB
        )
        yield name
    finally:
        with suppress(DockvisorError):
            vm_service.delete_vm(driver, name, force=True)


@pytest.fixture(scope="module")
def vm_engine(driver: LibvirtDriver, vm_name: str) -> Iterator[DockerEngine]:
    with engine_for(driver, vm_name) as engine:
        yield engine


@pytest.fixture
def engine(vm_engine: DockerEngine) -> Iterator[DockerEngine]:
    """The module's engine; the test's labelled containers are removed after it."""
    yield vm_engine
    leftovers = vm_engine.containers(all=True, filters={"label": [TEST_LABEL]})
    for container in leftovers:
        with suppress(DockvisorError):
            vm_engine.remove(container["Id"], force=True, volumes=True)
