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


if __name__ == "__main__":
    names = remove_test_objects(prefix=sys.argv[1] if len(sys.argv) > 1 else PREFIX)
    print("\n".join(names) if names else "nothing to remove")
