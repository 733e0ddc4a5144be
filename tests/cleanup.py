"""Remove what test runs made on qemu:///system: VMs, templates and volumes named dvt-*.

Run by the test session's teardown and by `make clean-test-vms` after a crashed run.
"""

from __future__ import annotations

import re
import sys
from contextlib import suppress

import libvirt

PREFIX = "dvt-"


def remove_test_objects(uri: str = "qemu:///system", prefix: str = PREFIX) -> list[str]:
    """Destroy and undefine domains whose name starts with `prefix`, delete their volumes
    and any volume of the dockvisor pool with that prefix; the names removed."""
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open(uri)
    removed = []
    owned: list[str] = []  # volumes named in the metadata of removed domains (an
    # adopted warm spare's disk keeps the spare's volume name)
    try:
        for dom in conn.listAllDomains(0):
            if not dom.name().startswith(prefix):
                continue
            with suppress(libvirt.libvirtError):
                owned += re.findall(r"<dockvisor:volume>([^<]+)</dockvisor:volume>",
                                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))  # fmt: skip
            with suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with suppress(libvirt.libvirtError):
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            removed.append(dom.name())
        with suppress(libvirt.libvirtError):
            pool = conn.storagePoolLookupByName("dockvisor")
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                if vol.name() in owned or vol.name().startswith((prefix, f"template-{prefix}")):
                    with suppress(libvirt.libvirtError):
                        vol.delete(0)
                        removed.append(vol.name())
    finally:
        conn.close()
    return removed


def park_spares(template: str = "docker-ready", uri: str = "qemu:///system") -> int:
    """Delete the host's warm spares of `template` and keep none; how many it kept."""
    from dockvisor.drivers.libvirt import LibvirtDriver
    from dockvisor.errors import DockvisorError

    try:
        driver = LibvirtDriver(uri)
    except DockvisorError:
        return 0
    try:
        kept = driver.get_template(template).spares_kept
        if kept:
            driver.keep_spares(template, 0)
        for spare in driver.list_spares():
            if spare.template == template:
                driver.delete_spare(spare.name)
        return kept
    except DockvisorError:
        return 0
    finally:
        driver.close()


def restore_spares(kept: int, template: str = "docker-ready", uri: str = "qemu:///system"
                   ) -> None:  # fmt: skip
    if not kept:
        return
    from dockvisor.drivers.libvirt import LibvirtDriver

    driver = LibvirtDriver(uri)
    try:
        driver.keep_spares(template, kept)
    finally:
        driver.close()


if __name__ == "__main__":
    names = remove_test_objects(prefix=sys.argv[1] if len(sys.argv) > 1 else PREFIX)
    print("\n".join(names) if names else "nothing to remove")
