"""Whether QEMU on this machine really runs guests under KVM, found by trying.

`/dev/kvm` can exist and KVM_CREATE_VM succeed while guests crawl: on this project's
CI machines (nested virtualisation) the BIOS alone takes 6 s under KVM against 0.15 s
under TCG, and a Linux guest never reaches userspace. So we boot a 512-byte boot sector
that waits for a timer interrupt and then writes to QEMU's isa-debug-exit port (QEMU
exits with status 3 only if that code ran), once under TCG and once under KVM. KVM is
used only if it runs the probe faster than TCG did just before. (Comparing with a limit
that scales with TCG's time let a busy machine pick a crawling KVM: with two VMs
already running, TCG took 1.5 s, the limit grew past KVM's 2.8 s, and the next guest
image build never got past its BIOS.) The answer is cached per kernel and QEMU binary.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

from dockvisor.paths import cache_dir

__all__ = ["Accel", "detect_acceleration", "guest_code_runs"]

Accel = Literal["kvm", "tcg"]

QEMU = "qemu-system-x86_64"

# Loaded at 0000:7C00. cli; ds=0; IVT[8] = 0000:7C15 (the handler below); sti;
# hlt until the BIOS timer's IRQ0 arrives; handler: mov al,1; out 0xf4,al; hlt.
_CODE = bytes.fromhex(
    "fa31c08ed8c70620 00157cc7062200 0000fbf4ebfd b001e6f4f4ebfd".replace(" ", "")
)
_BOOT_SECTOR = _CODE.ljust(510, b"\0") + b"\x55\xaa"
_RAN = 3  # isa-debug-exit: exit status is (value << 1) | 1


def guest_code_runs(accel: Accel, *, timeout: float = 8.0) -> float | None:
    """Boot the probe sector with `accel`: the seconds it took, or None if it never ran."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        return False
    with tempfile.TemporaryDirectory(prefix="dockvisor-probe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(_BOOT_SECTOR)
        argv = [
            qemu, "-machine", f"pc,accel={accel}", "-display", "none", "-nodefaults",
            "-no-user-config", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"file={disk},format=raw,if=ide,index=0", "-boot", "c",
        ]  # fmt: skip
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - start if proc.returncode == _RAN else None


def _fingerprint() -> str:
    qemu = shutil.which(QEMU) or ""
    mtime = os.stat(qemu).st_mtime_ns if qemu else 0
    return f"{platform.release()}|{qemu}|{mtime}|{os.path.exists('/dev/kvm')}"


def detect_acceleration() -> Accel:
    """ "kvm" if KVM really runs guests here, else "tcg" (software emulation)."""
    cache = cache_dir() / "acceleration.json"
    fingerprint = _fingerprint()
    try:
        saved = json.loads(cache.read_text())
        if saved.get("fingerprint") == fingerprint and saved.get("accel") in ("kvm", "tcg"):
            return saved["accel"]  # type: ignore[no-any-return]
    except (OSError, ValueError):
        pass
    accel: Accel = "tcg"
    if os.path.exists("/dev/kvm"):
        tcg = guest_code_runs("tcg") or 0.75
        kvm = guest_code_runs("kvm", timeout=max(1.5, 2 * tcg))
        if kvm is not None and kvm < tcg:
            accel = "kvm"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"fingerprint": fingerprint, "accel": accel}))
    return accel
