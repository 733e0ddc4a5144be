"""Domain XML for dockvisor's VMs and templates, written and read back.

What dockvisor needs to remember about a domain lives in the domain itself, in a
`<metadata>` element of our own namespace, so the hypervisor stays the one source of
truth and any libvirt client can see it:

    <dockvisor:domain kind="vm|template">
      <dockvisor:template>docker-ready</dockvisor:template>
      <dockvisor:disk mode="linked" size="8589934592" format="qcow2" base="/path/base.qcow2"
                      base-format="qcow2"/>
      <dockvisor:docker guest-port="2376" host-port="42007" tls="yes"
                        server-name="1a2b3c4d5e6f7a8b.vm.dockvisor"/>
      <dockvisor:config-drive>/path/NAME-1a2b3c4d-cidata.iso</dockvisor:config-drive>
      <dockvisor:mac>52:54:00:..</dockvisor:mac>
      <dockvisor:cmdline>console=ttyS0 root=/dev/vda rw</dockvisor:cmdline>
      <dockvisor:volume>NAME-1a2b3c4d.qcow2</dockvisor:volume>   (volumes it owns)
      <dockvisor:created>2026-11-22T00:00:00+00:00</dockvisor:created>
      <dockvisor:description>...</dockvisor:description>       (templates)
      <dockvisor:builtin image-key="..."/>                       (the built-in template)
      <dockvisor:warm spares="2"/>                    (a template: warm spares kept)
      <dockvisor:spare-seal qemu="7002000" machine="pc-i440fx-7.2" file-size="..."
                            saved="..." sha256="..."/>  (a warm spare, kind="spare": spares.py)
      <dockvisor:adopting boot-id="..." pid="..." started="..."/>  (a spare being adopted)
    </dockvisor:domain>

Under QEMU the VM's network is passed on QEMU's command line (libvirt 9.0 cannot express a
port forward for `<interface type='user'>`, nor the hub below): QEMU's user-mode network
(slirp) with the guest's Docker port forwarded from 127.0.0.1, reached by the card either
through the frame guard (`nic_socket`: the host's outbound network, never its loopback)
or directly with `restrict=on` (isolated). See network_args and guest_network.py.
"""

from __future__ import annotations

import re
import secrets
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime

from dockvisor.domain.model import DiskMode, TemplateOrigin, TemplateSizes
from dockvisor.domain.sizes import KiB

__all__ = [
    "NS",
    "Adopter",
    "DomainConfig",
    "SpareSeal",
    "DomainState",
    "build_domain_xml",
    "parse_domain_xml",
    "guard_slirp_socket",
    "network_args",
    "qemu_args_of",
    "random_mac",
    "with_network",
]

NS = "https://dockvisor.dev/xmlns/domain/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
NETDEV_ID = "dvnet0"  # the card's
SLIRP_ID = "dvslirp"
GUARD_ID = "dvguard"  # slirp's side of the frame guard
ET.register_namespace("dockvisor", NS)
ET.register_namespace("qemu", QEMU_NS)


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


@dataclass(frozen=True)
class SpareSeal:
    """What a warm spare was saved with: QEMU's version and machine type (a spare loads
    only into the same), and its disk file's size and SHA-256 then (a shorter file was
    cut, another digest was changed)."""

    qemu: int
    machine: str
    file_size: int
    saved: datetime
    sha256: str = ""


@dataclass(frozen=True)
class Adopter:
    """The process turning a spare into a VM (a spare still, under the VM's name, until
    it is one): its machine's boot, its pid and the pid's start time, so that one whose
    process is gone is told from one under way."""

    boot_id: str
    pid: int
    started: int  # the process's start time, in clock ticks since boot


@dataclass(frozen=True)
class DomainConfig:
    """Everything dockvisor puts into a domain's XML."""

    name: str
    kind: str  # "vm", "template" or "spare"
    vcpus: int
    max_vcpus: int
    memory: int  # bytes
    max_memory: int
    disk_path: str
    disk_format: str = "qcow2"
    disk_size: int = 0
    disk_readonly: bool = False
    disk_mode: DiskMode | None = None
    base_path: str | None = None  # the template base a linked disk sits on
    base_format: str = "qcow2"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None  # without dockvisor's own parameters
    template: str | None = None
    mac: str = field(default_factory=lambda: random_mac())
    docker_guest_port: int | None = None
    docker_host_port: int | None = None
    engine_name: str | None = None  # the name in the engine's TLS server certificate
    config_drive: str | None = None  # path of the read-only config drive (vdb)
    nic_socket: str | None = None  # QEMU: the frame guard's socket; None: isolated
    volumes: tuple[str, ...] = ()
    created: datetime | None = None
    description: str = ""
    builtin_key: str | None = None
    sizes: TemplateSizes | None = None  # a template's, as its publisher gave them
    origin: TemplateOrigin | None = None  # a template pulled from a catalog
    uuid: str | None = None
    managed: bool = True  # False: a domain dockvisor did not create
    seal: SpareSeal | None = None  # a warm spare, once saved
    spares_kept: int = 0  # a template: how many warm spares of it the host keeps
    adopter: Adopter | None = None  # a spare being adopted as the VM of this name


@dataclass(frozen=True)
class DomainState:
    """A parsed domain: its config plus what only the hypervisor knows."""

    config: DomainConfig
    uuid: str
    console_log: str | None


def random_mac() -> str:
    """A locally administered address in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def with_network(xml: str, *, host_port: int | None, nic_socket: str | None) -> str:
    """`xml` (a dockvisor VM under QEMU) with its Docker forward on `host_port` and its
    card behind the frame guard at `nic_socket` (None: isolated), and nothing else
    changed (a snapshot's configuration must stay the one its memory was saved with)."""
    root = ET.fromstring(xml)
    config = replace(parse_domain_xml(xml).config, docker_host_port=host_port,
                     nic_socket=nic_socket)  # fmt: skip
    docker = root.find(f"metadata/{_q('domain')}/{_q('docker')}")
    if docker is not None:
        if host_port:
            docker.set("host-port", str(host_port))
        else:
            docker.attrib.pop("host-port", None)
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is not None:
        for arg in list(commandline):
            commandline.remove(arg)
        _add_args(commandline, network_args(config))
        ET.indent(commandline, level=1)
    return ET.tostring(root, encoding="unicode")


def qemu_args_of(xml: str) -> list[str]:
    """The arguments a domain passes on QEMU's command line (dockvisor's: its network)."""
    args = ET.fromstring(xml).iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    return [arg.get("value", "") for arg in args]


def guard_slirp_socket(nic_socket: str) -> str:
    """Where slirp meets the frame guard of the card whose socket is `nic_socket`."""
    return nic_socket.removesuffix(".sock") + ".slirp.sock"


def network_args(config: DomainConfig) -> list[str]:
    """QEMU's arguments for a VM's network card. Never slirp on its own without
    `restrict=on`: slirp's gateway 10.0.2.2 is the host's loopback. Either the card is
    connected to the frame guard (`nic_socket`), and slirp, unrestricted, to the guard's
    other side, through a hub (frame_guard.py says what passes), or the card is on slirp
    with `restrict=on` (isolated: only the Docker forward comes in). The card keeps its
    address, and slirp stays in the VM's own QEMU, so snapshots load either way."""
    forward = ""
    if config.docker_guest_port and config.docker_host_port:
        forward = f",hostfwd=tcp:127.0.0.1:{config.docker_host_port}-:{config.docker_guest_port}"
    nic = f"virtio-net-pci,netdev={NETDEV_ID},mac={config.mac},bus=pci.0,addr=0x10"
    if not config.nic_socket:
        return ["-netdev", f"user,id={NETDEV_ID},restrict=on,ipv6=off{forward}", "-device", nic]
    return [
        "-netdev", f"user,id={SLIRP_ID},ipv6=off{forward}",
        "-netdev", _stream(GUARD_ID, guard_slirp_socket(config.nic_socket)),
        "-netdev", f"hubport,id={SLIRP_ID}-hub,hubid=0,netdev={SLIRP_ID}",
        "-netdev", f"hubport,id={GUARD_ID}-hub,hubid=0,netdev={GUARD_ID}",
        "-netdev", _stream(NETDEV_ID, config.nic_socket),
        "-device", nic,
    ]  # fmt: skip


def _stream(netdev_id: str, path: str) -> str:
    path = path.replace(",", ",,")  # QEMU's option syntax doubles commas
    return f"stream,id={netdev_id},server=off,addr.type=unix,addr.path={path}"


def _nic_socket(args: list[str]) -> str | None:
    """The unix socket path the card's netdev connects to, if it is a stream."""
    for value in args:
        if value.startswith(f"stream,id={NETDEV_ID},"):
            match = re.search(r",addr\.path=((?:[^,]|,,)*)", value)
            return match[1].replace(",,", ",") if match else None
    return None


def _add_args(commandline: ET.Element, values: list[str]) -> None:
    for value in values:
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": value})


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def build_domain_xml(
    config: DomainConfig, *, virt_type: str, console_log: str | None = None
) -> str:
    """The domain XML for `config` on a libvirt driver whose domain type is `virt_type`
    ("kvm", "qemu" for TCG, "test", "xen")."""
    qemu = virt_type in ("kvm", "qemu")
    root = ET.Element("domain", {"type": virt_type})
    _sub(root, "name", config.name)
    if config.uuid:
        _sub(root, "uuid", config.uuid)
    _metadata(ET.SubElement(root, "metadata"), config)
    _sub(root, "memory", str(config.max_memory // KiB), unit="KiB")
    _sub(root, "currentMemory", str(config.memory // KiB), unit="KiB")
    _sub(root, "vcpu", str(config.max_vcpus), placement="static", current=str(config.vcpus))
    if virt_type != "xen":
        # vCPU 0 is fixed; the others can be plugged and unplugged while the VM runs.
        vcpus = ET.SubElement(root, "vcpus")
        for i in range(config.max_vcpus):
            attrs = {"id": str(i), "enabled": "yes" if i < config.vcpus else "no"}
            attrs["hotpluggable"] = "no" if i == 0 else "yes"
            if i < config.vcpus:
                attrs["order"] = str(i + 1)
            _sub(vcpus, "vcpu", **attrs)
    os_el = ET.SubElement(root, "os")
    _sub(os_el, "type", "hvm", arch="x86_64", machine="pc") if qemu else _sub(os_el, "type", "hvm")
    if config.kernel:
        _sub(os_el, "kernel", config.kernel)
        if config.initrd:
            _sub(os_el, "initrd", config.initrd)
        _sub(os_el, "cmdline", _kernel_cmdline(config))
    else:
        _sub(os_el, "boot", dev="hd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if virt_type == "kvm":
        _sub(root, "cpu", mode="host-passthrough")
    # Under TCG, QEMU's default model (qemu64) is left: a Docker-ready guest reaches its
    # Docker API about 4 s sooner with it than with "maximum" or Nehalem (measured).
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")

    devices = ET.SubElement(root, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu" if virt_type != "xen" else "qemu", type=config.disk_format)
    _sub(disk, "source", file=config.disk_path)
    _sub(disk, "target", dev="vda" if virt_type != "xen" else "xvda",
         bus="virtio" if virt_type != "xen" else "xen")  # fmt: skip
    if config.disk_readonly:
        ET.SubElement(disk, "readonly")
    if config.config_drive:
        drive = _sub(devices, "disk", type="file", device="disk")
        _sub(drive, "driver", name="qemu", type="raw")
        _sub(drive, "source", file=config.config_drive)
        _sub(drive, "target", dev="vdb" if virt_type != "xen" else "xvdb",
             bus="virtio" if virt_type != "xen" else "xen")  # fmt: skip
        ET.SubElement(drive, "readonly")
    serial = _sub(devices, "serial", type="pty")
    if console_log:
        _sub(serial, "log", file=console_log, append="off")
    _sub(devices, "console", type="pty")
    if config.kind in ("vm", "spare"):
        if qemu:
            # A screen reached only through libvirt (consoles.py: virDomainOpenGraphicsFD),
            # never a TCP port or a socket file that guests or host users could reach.
            graphics = _sub(devices, "graphics", type="vnc")
            _sub(graphics, "listen", type="none")
            video = _sub(devices, "video")
            _sub(video, "model", type="vga", heads="1", primary="yes")
            channel = _sub(devices, "channel", type="unix")
            _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
            balloon = _sub(devices, "memballoon", model="virtio")
            _sub(balloon, "stats", period="5")
            rng = _sub(devices, "rng", model="virtio")
            _sub(rng, "backend", "/dev/urandom", model="random")
        elif virt_type == "xen":
            iface = _sub(devices, "interface", type="network")
            _sub(iface, "source", network="default")
            _sub(iface, "mac", address=config.mac)
    if qemu and config.kind in ("vm", "spare"):
        _add_args(ET.SubElement(root, f"{{{QEMU_NS}}}commandline"), network_args(config))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _kernel_cmdline(config: DomainConfig) -> str:
    parts = [config.cmdline or ""]
    if config.kind in ("vm", "spare"):
        parts.append(f"dockvisor.hostname={config.name}")
        if config.docker_guest_port:
            parts.append(f"dockvisor.docker_port={config.docker_guest_port}")
    return " ".join(p for p in parts if p)


def metadata_xml(config: DomainConfig) -> str:
    """dockvisor's metadata element of `config`, for virDomainSetMetadata: without
    namespaces, which libvirt puts on the element and its children itself (it refuses
    an element that declares the namespace already)."""
    holder = ET.Element("metadata")
    _metadata(holder, config)
    for el in holder.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
    return ET.tostring(holder[0], encoding="unicode")


def _metadata(parent: ET.Element, config: DomainConfig) -> None:
    meta = ET.SubElement(parent, _q("domain"), {"kind": config.kind})
    if config.template:
        _sub(meta, _q("template"), config.template)
    disk = {"size": str(config.disk_size), "format": config.disk_format}
    if config.disk_mode:
        disk["mode"] = config.disk_mode.value
    if config.base_path:
        disk["base"] = config.base_path
        disk["base-format"] = config.base_format
    _sub(meta, _q("disk"), **disk)
    if config.docker_guest_port:
        docker = {"guest-port": str(config.docker_guest_port)}
        if config.docker_host_port:
            docker["host-port"] = str(config.docker_host_port)
        if config.engine_name:
            docker["tls"] = "yes"
            docker["server-name"] = config.engine_name
        _sub(meta, _q("docker"), **docker)
    if config.config_drive:
        _sub(meta, _q("config-drive"), config.config_drive)
    _sub(meta, _q("mac"), config.mac)
    if config.cmdline is not None:
        _sub(meta, _q("cmdline"), config.cmdline)
    for volume in config.volumes:
        _sub(meta, _q("volume"), volume)
    created = config.created or datetime.now(UTC)
    _sub(meta, _q("created"), created.isoformat(timespec="seconds"))
    if config.description:
        _sub(meta, _q("description"), config.description)
    if config.builtin_key:
        _sub(meta, _q("builtin"), **{"image-key": config.builtin_key})
    if config.sizes is not None:
        _sub(meta, _q("sizes"), **{k.replace("_", "-"): str(v) for k, v in
                                   asdict(config.sizes).items() if v is not None})  # fmt: skip
    if config.origin is not None:
        _sub(meta, _q("origin"), **asdict(config.origin))
    if config.spares_kept:
        _sub(meta, _q("warm"), spares=str(config.spares_kept))
    if config.seal is not None:
        _sub(meta, _q("spare-seal"), qemu=str(config.seal.qemu), machine=config.seal.machine,
             **{"file-size": str(config.seal.file_size),
                "saved": config.seal.saved.isoformat(timespec="seconds"),
                "sha256": config.seal.sha256})  # fmt: skip
    if config.adopter is not None:
        _sub(meta, _q("adopting"), **{"boot-id": config.adopter.boot_id,
             "pid": str(config.adopter.pid), "started": str(config.adopter.started)})  # fmt: skip


def _sizes(el: ET.Element | None) -> TemplateSizes | None:
    if el is None:
        return None
    values = {f.name: int(v) for f in fields(TemplateSizes)
              if (v := el.get(f.name.replace("_", "-"))) is not None}  # fmt: skip
    return TemplateSizes(**values)


def _origin(el: ET.Element | None) -> TemplateOrigin | None:
    if el is None:
        return None
    return TemplateOrigin(**{f.name: el.get(f.name, "") for f in fields(TemplateOrigin)})


def _seal(el: ET.Element | None) -> SpareSeal | None:
    if el is None:
        return None
    saved = el.get("saved", "1970-01-01T00:00:00+00:00")
    return SpareSeal(qemu=int(el.get("qemu", "0")), machine=el.get("machine", ""),
                     file_size=int(el.get("file-size", "0")),
                     saved=datetime.fromisoformat(saved), sha256=el.get("sha256", ""))  # fmt: skip


def _adopter(el: ET.Element | None) -> Adopter | None:
    if el is None:
        return None
    return Adopter(boot_id=el.get("boot-id", ""), pid=int(el.get("pid", "0")),
                   started=int(el.get("started", "0")))  # fmt: skip


def _attr_int(el: ET.Element | None, name: str) -> int:
    return int(el.get(name, "0")) if el is not None else 0


def _int(el: ET.Element | None, default: int = 0) -> int:
    return int(el.text) if el is not None and el.text else default


# libvirt's memory units: K/KiB/M/MiB... are binary, KB/MB/GB... decimal, b/bytes bytes.
_UNIT_FACTORS = {"b": 1, "bytes": 1}
for _i, _letter in enumerate("kmgtpe", start=1):
    _UNIT_FACTORS[_letter] = _UNIT_FACTORS[f"{_letter}ib"] = KiB**_i
    _UNIT_FACTORS[f"{_letter}b"] = 1000**_i


def _kib(el: ET.Element | None) -> int:
    """A libvirt memory element in bytes (its unit attribute defaults to KiB)."""
    if el is None or not el.text:
        return 0
    unit = el.get("unit", "KiB").lower()
    if unit not in _UNIT_FACTORS:
        raise ValueError(f"unknown memory unit {unit!r} in domain XML")
    return int(el.text) * _UNIT_FACTORS[unit]


def parse_domain_xml(xml: str) -> DomainState:
    """Read a domain's XML (ours or anyone's) back into a DomainConfig."""
    root = ET.fromstring(xml)
    vcpu_el = root.find("vcpu")
    max_vcpus = _int(vcpu_el, 1)
    vcpus = int(vcpu_el.get("current", max_vcpus)) if vcpu_el is not None else 1
    # The VM's own disk is the first writable one (a config drive is read-only).
    disks = [d for d in root.iterfind("devices/disk") if d.get("device", "disk") == "disk"]
    disk_el = next((d for d in disks if d.find("readonly") is None), disks[0] if disks else None)
    disk_path = ""
    disk_format = "raw"
    if disk_el is not None:
        source = disk_el.find("source")
        if source is not None:
            disk_path = source.get("file") or source.get("dev") or source.get("volume") or ""
        driver = disk_el.find("driver")
        if driver is not None:
            disk_format = driver.get("type", "raw")
    serial_log = root.find("devices/serial/log")
    meta = root.find(f"metadata/{_q('domain')}")
    common = {
        "name": root.findtext("name", ""),
        "vcpus": vcpus,
        "max_vcpus": max_vcpus,
        "memory": _kib(root.find("currentMemory")) or _kib(root.find("memory")),
        "max_memory": _kib(root.find("memory")),
        "disk_path": disk_path,
        "disk_format": disk_format,
        "disk_readonly": disk_el is not None and disk_el.find("readonly") is not None,
        "kernel": root.findtext("os/kernel"),
        "initrd": root.findtext("os/initrd"),
        "uuid": root.findtext("uuid"),
    }
    if meta is None:
        config = DomainConfig(kind="vm", cmdline=root.findtext("os/cmdline"), managed=False,
                              mac="", **common)  # type: ignore[arg-type]  # fmt: skip
    else:
        disk_meta = meta.find(_q("disk"))
        docker = meta.find(_q("docker"))
        builtin = meta.find(_q("builtin"))
        mode = disk_meta.get("mode") if disk_meta is not None else None
        created = meta.findtext(_q("created"))
        config = DomainConfig(
            kind=meta.get("kind", "vm"),
            template=meta.findtext(_q("template")),
            disk_size=int(disk_meta.get("size", "0")) if disk_meta is not None else 0,
            disk_mode=DiskMode(mode) if mode else None,
            base_path=disk_meta.get("base") if disk_meta is not None else None,
            base_format=disk_meta.get("base-format", "qcow2") if disk_meta is not None else "qcow2",
            cmdline=meta.findtext(_q("cmdline")),
            mac=meta.findtext(_q("mac"), ""),
            docker_guest_port=int(docker.get("guest-port", "0")) or None
            if docker is not None
            else None,
            docker_host_port=int(docker.get("host-port", "0")) or None
            if docker is not None
            else None,
            engine_name=docker.get("server-name") if docker is not None else None,
            config_drive=meta.findtext(_q("config-drive")),
            nic_socket=_nic_socket(qemu_args_of(xml)),
            volumes=tuple(v.text or "" for v in meta.iterfind(_q("volume"))),
            created=datetime.fromisoformat(created) if created else None,
            description=meta.findtext(_q("description"), ""),
            builtin_key=builtin.get("image-key") if builtin is not None else None,
            sizes=_sizes(meta.find(_q("sizes"))),
            origin=_origin(meta.find(_q("origin"))),
            seal=_seal(meta.find(_q("spare-seal"))),
            spares_kept=_attr_int(meta.find(_q("warm")), "spares"),
            adopter=_adopter(meta.find(_q("adopting"))),
            **common,  # type: ignore[arg-type]
        )
    return DomainState(
        config=config,
        uuid=root.findtext("uuid", ""),
        console_log=serial_log.get("file") if serial_log is not None else None,
    )
