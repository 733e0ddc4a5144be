"""Disks as a resource on a XAPI pool: a VM's disks and their size, the room an SR has,
what its storage manager lets dockvisor do, and the rules for making and growing disks.

- A VM's (or snapshot's, or template's) disks are the VDIs of its Disk VBDs, less the
  config drive; the root disk is the bootable one at the lowest device. Their size is
  the VDIs' virtual_size, which XAPI rounds up to the VHD block (2 MiB; xapi-project/sm
  libs/sm/vhdutil.py validate_and_round_vhd_size).
- An SR's free space is physical_size less the larger of physical_utilisation and
  virtual_allocation (what its SM reports; a physical_size below 1 means the SR does
  not say): on a thin SR, what its disks may still grow into counts as taken, so a
  series of growths cannot promise more than the SR holds.
- Whether disks grow is the SR's storage manager's to say: the SM record of the SR's
  type (SM.type = SR.type) lists VDI_RESIZE (`VDI.resize`, on a disk no running VM
  has attached) and VDI_RESIZE_ONLINE (`VDI.resize_online`, on a running VM's disk)
  in its `features` (ocaml/xapi/xapi_vdi.ml feature_of_op and check_sm_feature_error,
  ocaml/xapi/xapi_sr_operations.ml sm_cap_table: SR_OPERATION_NOT_SUPPORTED without
  them). No driver of xapi-project/sm declares VDI_RESIZE_ONLINE today (LVHDSR.py
  resize: "We only support offline resize"): on a stock pool a running VM is stopped
  to grow its disk.
- Room: a new disk of S bytes needs S bytes free in its SR, a disk grown by G bytes
  needs G. On a thick SR (LVHD, XCP-ng's default local storage) that is what the SM
  itself takes and checks: a clone's leaf is inflated to its full size
  (LVHDVDI._do_snapshot, fullpr for provision "thick") and a resize takes the growth
  (LVHDVDI.resize, _ensureSpaceAvailable: SRNoSpace, XAPI's SR_BACKEND_FAILURE_44). A
  thin SR (EXT or NFS VHD files, thin LVHD) checks nothing (FileVDI.create and
  FileVDI.resize have no space check; thin LVHDVDI.resize keeps the LV deflated) and
  would accept a disk it cannot hold once written: dockvisor refuses there too, with
  OutOfCapacity before anything is made, so that a disk it made or grew can be filled
  (the libvirt adapter's rule for its pools).
- Disks only grow: the SM refuses a smaller size (VDISize, "shrinking not allowed",
  SR_BACKEND_FAILURE_79); dockvisor refuses it first, with InvalidInput (the rules of
  domain/sizing.py, as on every hypervisor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dockvisor.domain.model import Capability
from dockvisor.domain.sizes import format_size
from dockvisor.drivers.xapi.events import NULL, Record
from dockvisor.errors import NotFound, OutOfCapacity

__all__ = [
    "K_CONFIG_DRIVE",
    "CONFIG_DRIVE_DEVICE",
    "PoolStorage",
    "disk_size",
    "disks_of",
]

K_CONFIG_DRIVE = "dockvisor-config-drive"
CONFIG_DRIVE_DEVICE = "3"

Read = Callable[[str, str], Record | None]


def _device(vbd: Record) -> int:
    text = str(vbd.get("userdevice", ""))
    return int(text) if text.isdigit() else 1 << 16


def disks_of(record: Record, read: Read) -> list[tuple[str, Record]]:
    """(VDI ref, VDI record) of the disks of a VM, snapshot or template record, root
    first (bootable, then by device); never its config drive."""
    found: list[tuple[bool, int, str, Record]] = []
    for vbd_ref in record.get("VBDs") or []:
        vbd = read("VBD", vbd_ref)
        if vbd is None or vbd.get("type") != "Disk":
            continue
        if str(vbd.get("userdevice")) == CONFIG_DRIVE_DEVICE:
            continue
        vdi_ref = str(vbd.get("VDI", NULL))
        vdi = read("VDI", vdi_ref)
        if vdi is None or (vdi.get("other_config") or {}).get(K_CONFIG_DRIVE) == "true":
            continue
        found.append((not vbd.get("bootable"), _device(vbd), vdi_ref, vdi))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(ref, vdi) for _, _, ref, vdi in found]


def disk_size(record: Record, read: Read) -> int:
    """The size of a VM's (snapshot's, template's) disks: what VM.disk_size and
    Snapshot.disk_size report, so that a revert gives the VM its snapshot's."""
    return sum(int(str(vdi.get("virtual_size", 0))) for _, vdi in disks_of(record, read))


class PoolStorage:
    """What the pool's SRs hold and allow, read when asked (`call` is the driver's
    `_call(doing, method, *args)`)."""

    def __init__(self, uri: str, call: Callable[..., Any]) -> None:
        self._uri = uri
        self._call = call

    def free(self, sr: str) -> int | None:
        """Bytes free in the SR (None: a null SR, or one that does not say)."""
        if not sr or sr == NULL:
            return None
        try:
            record = self._call("reading a storage repository", "SR.get_record", sr)
        except NotFound:  # forgotten since the pool named it
            return None
        size = int(str(record.get("physical_size", -1)))
        if size < 1:
            return None
        # What its disks may still take counts as taken: on a thin SR the sum of their
        # sizes (virtual_allocation) exceeds what they hold until they are written.
        used = max(int(str(record.get("physical_utilisation", 0))),
                   int(str(record.get("virtual_allocation", 0))))  # fmt: skip
        return max(0, size - used)

    def features(self, sr: str) -> set[str]:
        """The capabilities the SR's storage manager declares (SM.features; the
        deprecated SM.capabilities on pools that have no features yet)."""
        if not sr or sr == NULL:
            return set()
        try:
            sr_type = self._call("reading a storage repository", "SR.get_type", sr)
        except NotFound:
            return set()
        managers = self._call("reading the storage managers", "SM.get_all_records")
        for sm in managers.values():
            if sm.get("type") == sr_type:
                return set(sm.get("features") or {}) or set(sm.get("capabilities") or [])
        return set()

    def growth(self, sr: str) -> Capability:
        """DISK_GROWTH and LIVE_DISK_GROWTH as the SR's storage manager allows them
        (resize_online is marked on the SR as a `vdi_resize` too: it needs both)."""
        features = self.features(sr)
        if "VDI_RESIZE" not in features:
            return Capability(0)
        if "VDI_RESIZE_ONLINE" in features:
            return Capability.DISK_GROWTH | Capability.LIVE_DISK_GROWTH
        return Capability.DISK_GROWTH

    def check_room(self, sr: str, needed: int, what: str) -> None:
        """OutOfCapacity if the SR has fewer than `needed` bytes free."""
        free = self.free(sr)
        if needed > 0 and free is not None and needed > free:
            label = self._call("reading a storage repository", "SR.get_name_label", sr)
            raise OutOfCapacity(
                f"pool {self._uri}: storage repository {label!r} has {format_size(free)} "
                f"free; {what} needs {format_size(needed)}"
            )
