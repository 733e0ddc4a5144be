from dataclasses import replace

import pytest

from dockvisor.domain.model import Capability, HostInfo, Template, TemplateSizes
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.domain.sizing import (
    SizeRequest,
    check_disk_growth,
    check_resize,
    check_storage_room,
    plan_size,
    plan_vm,
)
from dockvisor.errors import InvalidInput, OutOfCapacity

HOST = HostInfo(
    uri="test:///default",
    hypervisor="Test",
    version="1.0",
    hostname="box",
    cpus=2,
    memory=8 * GiB,
    max_vcpus_per_vm=4,
    acceleration=None,
    capabilities=Capability.NONE,
)


def test_default_room_to_grow_is_twice_the_size():
    assert plan_size(HOST, vcpus=1, memory=1 * GiB) == SizeRequest(1, GiB, 2, 2 * GiB)


def test_default_room_to_grow_stays_within_the_host():
    planned = plan_size(HOST, vcpus=3, memory=6 * GiB)
    assert (planned.max_vcpus, planned.max_memory) == (4, 8 * GiB)


def test_a_vm_as_big_as_the_host_gets_no_room_to_grow():
    planned = plan_size(HOST, vcpus=4, memory=8 * GiB)
    assert (planned.max_vcpus, planned.max_memory) == (4, 8 * GiB)


def test_explicit_maximums_are_kept():
    planned = plan_size(HOST, vcpus=1, memory=512 * MiB, max_vcpus=4, max_memory=4 * GiB)
    assert planned == SizeRequest(1, 512 * MiB, 4, 4 * GiB)


def test_explicit_maximum_equal_to_current_means_no_growth():
    planned = plan_size(HOST, vcpus=2, memory=GiB, max_vcpus=2, max_memory=GiB)
    assert (planned.max_vcpus, planned.max_memory) == (2, GiB)


def test_max_vcpus_below_vcpus_is_refused():
    with pytest.raises(InvalidInput, match=r"max vCPUs \(1\) is below vCPUs \(2\)"):
        plan_size(HOST, vcpus=2, memory=GiB, max_vcpus=1)


def test_max_memory_below_memory_is_refused():
    with pytest.raises(InvalidInput, match=r"max memory \(1GiB\) is below memory \(2GiB\)"):
        plan_size(HOST, vcpus=1, memory=2 * GiB, max_memory=GiB)


def test_zero_vcpus_is_invalid():
    with pytest.raises(InvalidInput, match="at least 1"):
        plan_size(HOST, vcpus=0, memory=GiB)


def test_more_vcpus_than_the_host_allows_names_the_limit():
    with pytest.raises(OutOfCapacity) as info:
        plan_size(HOST, vcpus=5, memory=GiB)
    message = str(info.value)
    assert "vCPUs 5" in message and "box" in message and "(4: 2 CPUs x 2)" in message


def test_max_vcpus_above_the_host_ceiling_is_out_of_capacity():
    with pytest.raises(OutOfCapacity, match="max vCPUs 8"):
        plan_size(HOST, vcpus=1, memory=GiB, max_vcpus=8)


def test_memory_below_the_minimum_is_refused():
    with pytest.raises(InvalidInput, match="64MiB is below the minimum of 128MiB"):
        plan_size(HOST, vcpus=1, memory=64 * MiB)
    assert plan_size(HOST, vcpus=1, memory=128 * MiB).memory == 128 * MiB


def test_memory_must_be_whole_mib():
    with pytest.raises(InvalidInput, match="not a whole number of MiB"):
        plan_size(HOST, vcpus=1, memory=200 * MiB + 512 * 1024)


def test_memory_above_the_host_is_out_of_capacity():
    with pytest.raises(OutOfCapacity, match=r"memory 9GiB is more than host box has \(8GiB\)"):
        plan_size(HOST, vcpus=1, memory=9 * GiB)


def test_max_memory_above_the_host_is_out_of_capacity():
    with pytest.raises(OutOfCapacity, match="max memory 16GiB"):
        plan_size(HOST, vcpus=1, memory=GiB, max_memory=16 * GiB)


def test_resize_with_nothing_to_change_is_refused():
    with pytest.raises(InvalidInput, match="nothing to change"):
        check_resize(HOST, vcpus=None, memory=None)


def test_resize_checks_each_given_value():
    check_resize(HOST, vcpus=4, memory=None)
    check_resize(HOST, vcpus=None, memory=8 * GiB)
    with pytest.raises(OutOfCapacity):
        check_resize(HOST, vcpus=5, memory=None)
    with pytest.raises(InvalidInput):
        check_resize(HOST, vcpus=None, memory=100 * MiB)
    with pytest.raises(InvalidInput):
        check_resize(HOST, vcpus=0, memory=GiB)


# -- a new VM's whole plan: defaults, minimums, disk -----------------------------------

TEMPLATE = Template(
    name="docker-ready", description="", disk_size=2 * GiB, docker_ready=True, builtin=True,
    boots_kernel=True, sizes=TemplateSizes(min_vcpus=1, min_memory=256 * MiB, default_vcpus=2,
                                           default_memory=1 * GiB, default_disk=4 * GiB),
)  # fmt: skip
ROOMY = replace(HOST, storage_free=100 * GiB)


def test_what_is_not_given_is_the_templates_default():
    plan = plan_vm(ROOMY, TEMPLATE, vcpus=None, memory=None)
    assert (plan.size.vcpus, plan.size.memory, plan.disk) == (2, 1 * GiB, 4 * GiB)
    plan = plan_vm(ROOMY, TEMPLATE, vcpus=1, memory=512 * MiB, disk=3 * GiB)
    assert (plan.size.vcpus, plan.size.memory, plan.disk) == (1, 512 * MiB, 3 * GiB)
    bare = replace(TEMPLATE, sizes=TemplateSizes())
    assert plan_vm(ROOMY, bare, vcpus=1, memory=GiB).disk == 2 * GiB, "else its own disk"
    with pytest.raises(InvalidInput, match="say how much vCPUs: template 'docker-ready' has no"):
        plan_vm(ROOMY, bare, vcpus=None, memory=GiB)


def test_a_vm_below_its_templates_needs_is_refused():
    with pytest.raises(InvalidInput, match="needs at least 256MiB of memory"):
        plan_vm(ROOMY, TEMPLATE, vcpus=1, memory=128 * MiB)
    with pytest.raises(InvalidInput, match="smaller than the 2GiB disk of template 'docker-ready'"):
        plan_vm(ROOMY, TEMPLATE, vcpus=1, memory=GiB, disk=1 * GiB)
    with pytest.raises(InvalidInput, match="whole number of MiB"):
        plan_vm(ROOMY, TEMPLATE, vcpus=1, memory=GiB, disk=3 * GiB + 1)


def test_a_disk_the_storage_cannot_hold_is_refused():
    small = replace(HOST, storage_free=3 * GiB)
    with pytest.raises(OutOfCapacity, match="storage has 3GiB free; this needs 4GiB more"):
        plan_vm(small, TEMPLATE, vcpus=1, memory=GiB)
    check_storage_room(replace(HOST, storage_free=None), 10**15)  # it does not say: no check


def test_disks_only_grow():
    assert check_disk_growth("web", 4 * GiB, 6 * GiB) == 2 * GiB
    assert check_disk_growth("web", 4 * GiB, 4 * GiB) == 0
    with pytest.raises(InvalidInput, match="'web' has a 4GiB disk; disks can only grow"):
        check_disk_growth("web", 4 * GiB, 3 * GiB)
