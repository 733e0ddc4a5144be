"""A VM's disk as a resource, through the `dockvisor` command on qemu:///system with a
real guest: chosen at create, seen by the guest, grown live (seen at once by `df` in a
container, without a reboot), cloned at its grown size, never shrunk, and returned to
a snapshot's size by a revert (guest filesystem included)."""

from __future__ import annotations

import libvirt
import pytest

from dockvisor.domain.sizes import GiB
from dockvisor.engines.docker import DockerEngine
from tests.e2e.test_cli_lifecycle import dv, dv_error, engine_of, run

pytestmark = pytest.mark.vm


def filesystem(engine: DockerEngine) -> tuple[int, str]:
    """The size in bytes of the root filesystem as a new container sees it (`df`), and
    the guest's boot id (it changes when the guest reboots)."""
    out = engine.run_to_completion(
        "busybox:latest", ["sh", "-c", "df -B1 / | tail -1; cat /proc/sys/kernel/random/boot_id"]
    )
    df, boot = out.strip().splitlines()
    return int(df.split()[1]), boot


def about(size: int) -> tuple[int, int]:
    """What `df` shows of an ext4 filesystem filling `size` bytes: a bit less (metadata)."""
    return int(size * 0.9), size


def test_disk_chosen_grown_live_refused_smaller_and_reverted(unique_name: str) -> None:
    name = unique_name
    vm = dv("vm", "create", name, "--vcpus", "1", "--memory", "1GiB", "--disk", "4GiB")
    assert vm["disk_size"] == 4 * GiB
    listed = run("vm", "list").stdout
    assert any(name in line and "4GiB linked" in line for line in listed.splitlines()), listed
    with engine_of(name) as engine:
        size, boot = filesystem(engine)
        low, high = about(4 * GiB)
        assert low < size <= high, f"the guest's filesystem fills the 4GiB disk: {size}"

        dv("vm", "snapshot", name, "small")
        free = dv("host")["storage_free"]
        grown = dv("vm", "set", name, "--disk", "6GiB")
        # The pool's free space counts what thin disks may still grow into: a growth
        # takes its room at once, though nothing was written.
        assert dv("host")["storage_free"] <= free - 2 * GiB + 64 * 1024**2
        assert grown["applied"] == {"disk": 6 * GiB}
        size, boot_after = filesystem(engine)
        low, high = about(6 * GiB)
        assert low < size <= high, f"df sees the grown disk at once: {size}"
        assert boot_after == boot, "grown live, without a reboot"

    clone = f"{name}-c"
    assert dv("vm", "clone", name, clone, "--start")["disk_size"] == 6 * GiB
    with engine_of(clone) as engine:
        size, _ = filesystem(engine)
        low, high = about(6 * GiB)
        assert low < size <= high, "a clone of a grown disk has its size and filesystem"
    dv("vm", "rm", "--force", clone)

    error = dv_error("vm", "set", name, "--disk", "5GiB", code=2)
    assert "can only grow" in error and "6GiB" in error
    assert dv("vm", "show", name)["disk_size"] == 6 * GiB
    snaps = dv("vm", "snapshots", name)
    assert [s["disk_size"] for s in snaps] == [4 * GiB]

    dv("vm", "revert", name, "small")
    assert dv("vm", "show", name)["disk_size"] == 4 * GiB
    with engine_of(name) as engine:
        size, _ = filesystem(engine)
        low, high = about(4 * GiB)
        assert low < size <= high, "the revert gave back the disk and filesystem of then"
    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(name)
        assert dom.blockInfo("vda")[0] == 4 * GiB, "the hypervisor's disk is that size too"
    finally:
        conn.close()


def test_bad_disk_sizes_leave_nothing(unique_name: str) -> None:
    name = unique_name
    small = dv_error("vm", "create", name, "--vcpus", "1", "--memory", "1GiB",
                     "--disk", "1GiB", code=2)  # fmt: skip
    assert "smaller than the 2GiB disk of template 'docker-ready'" in small
    unitless = dv_error("vm", "create", name, "--vcpus", "1", "--memory", "1GiB",
                        "--disk", "4", code=2)  # fmt: skip
    assert "needs a unit" in unitless
    huge = dv_error("vm", "create", name, "--vcpus", "1", "--memory", "1GiB", "--disk", "1000TiB")
    assert "storage has" in huge and "free" in huge
    conn = libvirt.open("qemu:///system")
    try:
        assert name not in [d.name() for d in conn.listAllDomains(0)]
        pool = conn.storagePoolLookupByName("dockvisor")
        assert not [v for v in pool.listAllVolumes(0) if v.name().startswith(name)]
    finally:
        conn.close()
