"""The Docker-ready guest image, built from Debian packages only.

What comes out (in the cache, under a key derived from every input):

- `vmlinuz`: the Debian cloud kernel;
- `initrd.img`: a tiny initramfs that loads the virtio block driver and switches to the disk;
- `disk.qcow2`: an ext4 root filesystem holding busybox, dockerd, containerd, runc,
  the QEMU guest agent, iptables, the kernel modules and our init. It is booted once at
  build time ("sealing") to import a busybox base image into Docker, so every VM made
  from it has that image without a registry. VMs get a qcow2 overlay on this disk and
  keep /var/lib/docker on it, so snapshots and clones carry container state.

Nothing is downloaded but the Debian packages apt resolves on the host.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dockvisor.drivers.libvirt.acceleration import QEMU, detect_acceleration
from dockvisor.errors import ImageBuildError
from dockvisor.guest import debian
from dockvisor.guest.cpio import write_initramfs
from dockvisor.paths import cache_dir

__all__ = ["GuestImage", "build_image", "cached_image", "image_key"]

# What the guest runs. Their shared libraries are resolved from these.
GUEST_PACKAGES = (
    "linux-image-cloud-amd64",
    "busybox-static",
    "docker.io",
    "containerd",
    "runc",
    "tini",
    "iptables",
    "qemu-guest-agent",
    "e2fsprogs",  # resize2fs: the root filesystem fills a disk made or grown larger
)
# Modules the initramfs loads to see the root disk (the rest load from the disk).
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "xen-blkfront")
DISK_SIZE = "2G"  # the image's own; VMs get the template's default disk or --disk
DEFAULT_DISK = 4 * 1024**3
DOCKER_PORT = 2376  # dockerd with --tlsverify (the IANA port for Docker over TLS)
RECIPE_VERSION = "1"

# Files of packages the guest never uses; dropping them keeps the disk small.
_PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/lintian",
    "usr/share/bash-completion", "usr/share/zsh", "usr/share/fish", "etc/init.d",
    "etc/init", "etc/default", "usr/lib/systemd", "lib/systemd", "usr/share/docker.io/contrib",
    "usr/bin/dnet", "usr/sbin/ovrouter", "boot",
)  # fmt: skip

Progress = Callable[[str, float], None]


def _no_progress(step: str, fraction: float) -> None:
    pass


@dataclass(frozen=True)
class GuestImage:
    """A built image: its files and what it was made of."""

    key: str
    directory: Path
    kernel_version: str
    packages: tuple[str, ...]
    docker_port: int = DOCKER_PORT

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def cmdline(self) -> str:
        # The kernel writes to the screen (tty0) and the serial port; /dev/console, where
        # init logs, is the last one: the serial port.
        return "console=tty0 console=ttyS0 root=/dev/vda rw panic=-1"


def _recipe_digest() -> str:
    h = hashlib.sha256(RECIPE_VERSION.encode())
    h.update(Path(__file__).read_bytes())
    files = resources.files("dockvisor.guest") / "files"
    for name in sorted(f.name for f in files.iterdir()):
        h.update(name.encode() + (files / name).read_bytes())
    return h.hexdigest()


def image_key(packages: list[debian.DebianPackage]) -> str:
    """A short digest of the package versions and of the build recipe."""
    h = hashlib.sha256(_recipe_digest().encode())
    for p in packages:
        h.update(f"{p.name}={p.version};".encode())
    return h.hexdigest()[:16]


def _images_dir() -> Path:
    return cache_dir() / "images"


def cached_image(key: str | None = None) -> GuestImage | None:
    """The image with `key` (or the newest complete one) if the cache has it."""
    root = _images_dir()
    candidates = [root / key] if key else sorted(root.glob("*"), key=_mtime, reverse=True)
    for directory in candidates:
        manifest = directory / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            return GuestImage(
                key=data["key"],
                directory=directory,
                kernel_version=data["kernel_version"],
                packages=tuple(data["packages"]),
                docker_port=data["docker_port"],
            )
    return None


def _mtime(path: Path) -> float:
    try:
        return (path / "manifest.json").stat().st_mtime
    except OSError:
        return 0.0


def _apt_state() -> str:
    """A digest of what apt knows: its package lists and sources (they change together
    with `apt-get update`)."""
    h = hashlib.sha256(",".join(GUEST_PACKAGES).encode())
    for pattern in ("/var/lib/apt/lists/*Packages*", "/etc/apt/sources.list*"):
        for path in sorted(glob.glob(pattern)):
            st = os.stat(path)
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _resolve_packages() -> list[debian.DebianPackage]:
    """The packages the image is made of, resolved again only when apt's lists change."""
    memo = cache_dir() / "resolved-packages.json"
    state = _apt_state()
    try:
        saved = json.loads(memo.read_text())
        if saved["apt_state"] == state:
            return [debian.DebianPackage(*p) for p in saved["packages"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    packages = debian.resolve(GUEST_PACKAGES)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({"apt_state": state, "packages": [
        [p.name, p.version, p.architecture] for p in packages]}))  # fmt: skip
    return packages


def build_image(*, progress: Progress = _no_progress, force: bool = False) -> GuestImage:
    """Build the guest image unless the cache already holds one with the same inputs.

    On failure nothing half-built is left under the key's directory.
    """
    progress("resolving Debian packages", 0.0)
    packages = _resolve_packages()
    key = image_key(packages)
    if not force and (image := cached_image(key)):
        progress("cached", 1.0)
        return image
    _images_dir().mkdir(parents=True, exist_ok=True)
    # One build of a key at a time (two processes building into one work directory
    # wreck each other's tree); the second then finds the first's result.
    with open(_images_dir() / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (image := cached_image(key)):
            progress("cached", 1.0)
            return image
        return _build(key, packages, progress)


def _build(key: str, packages: list[debian.DebianPackage], progress: Progress) -> GuestImage:
    directory = _images_dir() / key
    work = _images_dir() / f".{key}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        progress("downloading Debian packages", 0.05)
        debs = debian.download(packages, cache_dir() / "debs")
        progress("unpacking", 0.25)
        root = work / "root"
        kernel_version = _assemble_root(root, debs, work)
        progress("making the initramfs", 0.45)
        _make_initramfs(root, kernel_version, work / "initrd.img")
        progress("making the root filesystem", 0.5)
        raw = work / "disk.raw"
        _run(
            ["mke2fs", "-q", "-t", "ext4", "-L", "dockvisor", "-d", str(root), str(raw), DISK_SIZE]
        )
        shutil.rmtree(root)
        progress("sealing: first boot imports the busybox image", 0.6)
        _seal(work, raw)
        progress("converting to qcow2", 0.9)
        _run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "disk.qcow2")]
        )
        raw.unlink()
        manifest = {
            "key": key,
            "kernel_version": kernel_version,
            "packages": [f"{p.name}={p.version}" for p in packages],
            "docker_port": DOCKER_PORT,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        work.rename(directory)
        for older in _images_dir().iterdir():  # earlier builds; templates hold copies
            if older != directory and not older.name.startswith("."):
                shutil.rmtree(older, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    progress("done", 1.0)
    image = cached_image(key)
    assert image is not None
    return image


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise ImageBuildError(f"{argv[0]} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return proc  # type: ignore[no-any-return]


def _assemble_root(root: Path, debs: list[Path], work: Path) -> str:
    """Lay out the guest's root filesystem; return the kernel version."""
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / d).mkdir(parents=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    for d in ("etc", "proc", "sys", "dev", "run", "tmp", "var/log", "var/lib", "root", "mnt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")
    os.chmod(root / "tmp", 0o1777)
    for deb in debs:
        debian.unpack(deb, root)
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise ImageBuildError("the kernel package has no /boot/vmlinuz-*")
    kernel_version = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    for rel in _PRUNE:
        target = root / rel
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)

    busybox = root / "usr/bin/busybox"
    applets = _run([str(busybox), "--list"]).stdout.split()
    for applet in applets:
        dest = root / "usr/bin" / applet
        if not (dest.exists() or dest.is_symlink() or (root / "usr/sbin" / applet).exists()):
            dest.symlink_to("busybox")
    # The guest agent sets the clock with /sbin/hwclock (after a revert, for one).
    (root / "usr/sbin/hwclock").symlink_to("../bin/busybox")
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables",
                 "ip6tables-save", "ip6tables-restore"):  # fmt: skip
        alias = root / "usr/sbin" / name
        alias.unlink(missing_ok=True)
        alias.symlink_to("xtables-nft-multi")  # it acts on the name it is called by

    files = resources.files("dockvisor.guest") / "files"
    (root / "usr/lib/dockvisor").mkdir(parents=True)
    for name, dest_rel in (("init", "usr/sbin/init"), ("shutdown", "usr/sbin/shutdown"),
                           ("uevent", "usr/lib/dockvisor/uevent"),
                           ("udhcpc", "usr/lib/dockvisor/udhcpc")):  # fmt: skip
        dest = root / dest_rel
        dest.unlink(missing_ok=True)
        dest.write_bytes((files / name).read_bytes())
        dest.chmod(0o755)
    etc = root / "etc"
    power_button = etc / "acpi/PWRF/00000080"  # busybox acpid runs it on a power-button press
    power_button.parent.mkdir(parents=True)
    power_button.write_text("#!/bin/sh\nkill -USR2 1\n")
    power_button.chmod(0o755)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndocker:x:999:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "resolv.conf").write_text("")
    (etc / "os-release").write_text(
        'NAME="dockvisor Docker-ready guest"\nID=dockvisor\nPRETTY_NAME="dockvisor guest '
        f'(Debian packages, kernel {kernel_version})"\n'
    )
    (root / "usr/share/dockvisor").mkdir(parents=True, exist_ok=True)
    _busybox_rootfs_tar(busybox, applets, root / "usr/share/dockvisor/busybox.tar")
    _run([str(busybox), "depmod", "-b", str(root), kernel_version])
    _check_libraries(root)
    return kernel_version


def _busybox_rootfs_tar(busybox: Path, applets: list[str], dest: Path) -> None:
    """A root filesystem of busybox alone, for `docker import` as busybox:latest."""

    def info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime = kind, mode, 0
        return ti

    with tarfile.open(dest, "w") as tar:
        for d in ("bin", "etc", "dev", "proc", "sys", "root", "var", "home"):
            tar.addfile(info(d, tarfile.DIRTYPE, 0o755))
        tar.addfile(info("tmp", tarfile.DIRTYPE, 0o1777))
        data = busybox.read_bytes()
        ti = info("bin/busybox", tarfile.REGTYPE, 0o755)
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
        for applet in applets:
            if applet != "busybox":
                link = info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
                link.linkname = "busybox"
                tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")):  # fmt: skip
            blob = text.encode()
            ti = info(name, tarfile.REGTYPE, 0o644)
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))


def _check_libraries(root: Path) -> None:
    """Every shared library a guest binary needs must be in the image."""
    libdirs = [root / "usr/lib/x86_64-linux-gnu", root / "usr/lib", root / "usr/lib64"]
    missing: dict[str, str] = {}
    for d in ("usr/bin", "usr/sbin"):
        for exe in (root / d).iterdir():
            if exe.is_symlink() or not exe.is_file():
                continue
            with exe.open("rb") as f:
                if f.read(4) != b"\x7fELF":
                    continue
            proc = subprocess.run(["objdump", "-p", str(exe)], capture_output=True, text=True)
            for line in proc.stdout.splitlines():
                parts = line.split()
                needed = len(parts) == 2 and parts[0] == "NEEDED"
                if needed and not any((ld / parts[1]).exists() for ld in libdirs):
                    missing[parts[1]] = exe.name
    if missing:
        listing = ", ".join(f"{lib} (for {exe})" for lib, exe in sorted(missing.items()))
        raise ImageBuildError(f"guest image lacks shared libraries: {listing}")


def _make_initramfs(root: Path, kernel_version: str, dest: Path) -> None:
    tree = dest.parent / "initramfs"
    (tree / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "newroot"):
        (tree / d).mkdir()
    shutil.copy2(root / "usr/bin/busybox", tree / "bin/busybox")
    for applet in ("sh", "mount", "umount", "modprobe", "switch_root", "seq", "sleep", "cat",
                   "mkdir", "echo"):  # fmt: skip
        (tree / "bin" / applet).symlink_to("busybox")
    files = resources.files("dockvisor.guest") / "files"
    (tree / "init").write_bytes((files / "initramfs-init").read_bytes())
    (tree / "init").chmod(0o755)

    moddir = root / "lib/modules" / kernel_version
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
    by_name = {Path(p).name.removesuffix(".ko").replace("-", "_"): p for p in deps}
    wanted: list[str] = []
    for name in INITRAMFS_MODULES:
        module = by_name.get(name.replace("-", "_"))
        if module is None:
            continue
        for p in [*reversed(deps[module]), module]:
            if p not in wanted:
                wanted.append(p)
    target = tree / "lib/modules" / kernel_version
    for rel in wanted:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(moddir / rel, target / rel)
    (tree / "modules").write_text(
        "\n".join(Path(p).name.removesuffix(".ko") for p in wanted) + "\n"
    )
    _run([str(tree / "bin/busybox"), "depmod", "-b", str(tree), kernel_version])
    write_initramfs(tree, dest)
    shutil.rmtree(tree)


def _seal(work: Path, raw: Path) -> None:
    """First boot at build time: the guest imports busybox:latest and powers off."""
    accel = detect_acceleration()
    argv = [
        QEMU, "-machine", f"pc,accel={accel}", "-m", "1024", "-smp", "2",
        "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot",
        "-serial", "stdio", "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"),
        "-append", "console=ttyS0 root=/dev/vda rw panic=-1 dockvisor.seal=1",
        "-drive", f"file={raw},format=raw,if=virtio",
    ]  # fmt: skip
    if accel == "tcg":
        argv[1:1] = ["-cpu", "max"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        raise ImageBuildError(
            f"sealing boot did not finish in 240 s; console: {out[-800:]}"
        ) from None
    console = proc.stdout
    (work / "seal-console.log").write_text(console)
    if "] busybox image imported" not in console or "] sealed" not in console:
        raise ImageBuildError(f"sealing boot failed; last console lines: {console[-800:]}")
