"""Copying a VM's disk while QEMU has it open: a block-copy mirror, cut at an instant.

libvirt's volume copy flattens qcow2 chains and cannot read a disk a running QEMU writes
to. A block-copy job mirrors the disk into a pre-created volume (only the top layer for
a linked copy) until source and copy converge; the guest's filesystems are frozen
through its agent, the job is cancelled, and the copy holds the disk as of that instant.
"""

from __future__ import annotations

import time
from contextlib import suppress

import libvirt

from dockvisor.drivers.base import Progress
from dockvisor.errors import GuestTimeout, HypervisorError

__all__ = ["mirror_and_cut"]


def mirror_and_cut(
    dom: libvirt.virDomain, dest: str, *, shallow: bool, freeze: bool, progress: Progress
) -> None:
    """Copy disk vda of the running (or paused) `dom` into the qcow2 file `dest`.

    `shallow` copies the top layer only (dest must sit on the same backing file).
    `freeze` quiesces the guest's filesystems for the cut when its agent answers.
    """
    target = f"<disk type='file'><source file='{dest}'/><driver type='qcow2'/></disk>"
    flags = libvirt.VIR_DOMAIN_BLOCK_COPY_REUSE_EXT | libvirt.VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB
    if shallow:
        flags |= libvirt.VIR_DOMAIN_BLOCK_COPY_SHALLOW
    dom.blockCopy("vda", target, None, flags)
    try:
        deadline = time.monotonic() + 3600
        while "ready='yes'" not in dom.XMLDesc(0):
            info = dom.blockJobInfo("vda", 0)
            if not info:
                raise HypervisorError(f"the disk copy of {dom.name()} stopped unexpectedly")
            if info.get("end"):
                progress("copying disk", 0.1 + 0.8 * info["cur"] / info["end"])
            if time.monotonic() > deadline:
                raise GuestTimeout(f"the disk copy of {dom.name()} did not finish in an hour")
            time.sleep(0.1)
        frozen = False
        if freeze:
            with suppress(libvirt.libvirtError):
                dom.fsFreeze(None, 0)
                frozen = True
        try:
            dom.blockJobAbort("vda", 0)  # the copy now holds the disk as of this instant
        finally:
            if frozen:
                with suppress(libvirt.libvirtError):
                    dom.fsThaw(None, 0)
    except BaseException:
        with suppress(libvirt.libvirtError):
            dom.blockJobAbort("vda", 0)
        raise
