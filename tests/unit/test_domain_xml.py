import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from dockvisor.domain.model import DiskMode
from dockvisor.domain.sizes import GiB, KiB, MiB
from dockvisor.drivers.libvirt.domain_xml import (
    Adopter,
    DomainConfig,
    SpareSeal,
    build_domain_xml,
    guard_slirp_socket,
    parse_domain_xml,
    qemu_args_of,
    random_mac,
    with_network,
)

QEMU = "{http://libvirt.org/schemas/domain/qemu/1.0}"

VM = DomainConfig(
    name="web",
    kind="vm",
    vcpus=2,
    max_vcpus=4,
    memory=1 * GiB,
    max_memory=2 * GiB,
    disk_path="/var/lib/dockvisor/web-1a2b3c4d.qcow2",
    disk_format="qcow2",
    disk_size=8 * GiB,
    disk_mode=DiskMode.LINKED,
    base_path="/var/lib/dockvisor/docker-ready.qcow2",
    kernel="/var/lib/dockvisor/docker-ready.vmlinuz",
    initrd="/var/lib/dockvisor/docker-ready.initrd",
    cmdline="console=ttyS0 root=/dev/vda rw",
    template="docker-ready",
    mac="52:54:00:ab:cd:ef",
    docker_guest_port=2375,
    docker_host_port=41007,
    volumes=("web-1a2b3c4d.qcow2",),
    created=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    uuid="6f1c2a9e-0d2b-4d7e-9a51-3c8f0e4b7d21",
)
GUARDED = replace(VM, nic_socket="/run/dockvisor/net/web.sock")  # outbound, behind the guard

TEMPLATE = DomainConfig(
    name="docker-ready",
    kind="template",
    vcpus=1,
    max_vcpus=1,
    memory=512 * MiB,
    max_memory=512 * MiB,
    disk_path="/var/lib/dockvisor/docker-ready.qcow2",
    disk_size=2 * GiB,
    disk_readonly=True,
    kernel="/var/lib/dockvisor/docker-ready.vmlinuz",
    initrd="/var/lib/dockvisor/docker-ready.initrd",
    cmdline="console=ttyS0 root=/dev/vda rw",
    mac="52:54:00:01:02:03",
    docker_guest_port=2375,
    volumes=("docker-ready.qcow2", "docker-ready.vmlinuz"),
    created=datetime(2026, 1, 1, tzinfo=UTC),
    description="Debian with a Docker engine",
    builtin_key="bookworm-3f2a",
)


def roundtrip(config, virt_type):
    return parse_domain_xml(build_domain_xml(config, virt_type=virt_type)).config


def relied_on(c):
    return (
        c.name, c.kind, c.vcpus, c.max_vcpus, c.memory, c.max_memory,
        c.disk_path, c.disk_format, c.disk_mode, c.disk_size, c.disk_readonly, c.base_path,
        c.template, c.docker_guest_port, c.docker_host_port, c.mac, c.volumes,
        c.description, c.builtin_key, c.cmdline, c.kernel, c.initrd, c.created, c.managed,
    )  # fmt: skip


@pytest.mark.parametrize("virt_type", ["kvm", "qemu", "test", "xen"])
def test_vm_config_reads_back_as_written(virt_type):
    parsed = roundtrip(VM, virt_type)
    assert relied_on(parsed) == relied_on(VM)
    assert parsed == VM


@pytest.mark.parametrize("virt_type", ["qemu", "test"])
def test_a_spare_and_a_spare_being_adopted_read_back(virt_type):
    seal = SpareSeal(qemu=7002000, machine="pc-i440fx-7.2", file_size=284884992,
                     saved=datetime(2026, 1, 1, tzinfo=UTC), sha256="ab" * 32)  # fmt: skip
    spare = replace(VM, name="spare.0a1b2c3d", kind="spare", seal=seal)
    assert roundtrip(spare, virt_type) == spare
    adopting = replace(spare, name="web", seal=None,
                       adopter=Adopter(boot_id="b0-07", pid=4242, started=123456))  # fmt: skip
    assert roundtrip(adopting, virt_type) == adopting


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_a_guarded_vm_reads_back_its_socket(virt_type):
    assert roundtrip(GUARDED, virt_type) == GUARDED


@pytest.mark.parametrize("virt_type", ["qemu", "test", "xen"])
def test_template_config_reads_back_as_written(virt_type):
    parsed = roundtrip(TEMPLATE, virt_type)
    assert relied_on(parsed) == relied_on(TEMPLATE)
    assert parsed == TEMPLATE


def test_uuid_and_console_log_read_back():
    state = parse_domain_xml(build_domain_xml(VM, virt_type="qemu", console_log="/tmp/web.log"))
    assert state.uuid == VM.uuid
    assert state.console_log == "/tmp/web.log"


def qemu_args(xml):
    return [a.get("value") for a in ET.fromstring(xml).iterfind(f"{QEMU}commandline/{QEMU}arg")]


def netdevs(args):
    """{netdev id: its options} of a QEMU argument list."""
    found = {}
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "-netdev":
            kind, *options = value.split(",")
            opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in options)
            found[opts["id"]] = (kind, opts)
    return found


def card(args):
    value = args[args.index("-device") + 1].split(",")
    return value[0], dict(o.split("=", 1) for o in value[1:])


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_an_isolated_qemu_vm_is_on_restricted_slirp_with_the_docker_forward(virt_type):
    args = qemu_args(build_domain_xml(VM, virt_type=virt_type))
    assert netdevs(args) == {
        "dvnet0": (
            "user",
            {"id": "dvnet0", "restrict": "on", "ipv6": "off",
             "hostfwd": "tcp:127.0.0.1:41007-:2375"},
        )
    }  # fmt: skip
    model, options = card(args)
    assert model == "virtio-net-pci"
    assert options["netdev"] == "dvnet0" and options["addr"] == "0x10"
    assert options["mac"] == "52:54:00:ab:cd:ef"


def test_a_qemu_vm_without_host_port_has_a_restricted_network_and_no_forward():
    args = qemu_args(build_domain_xml(replace(VM, docker_host_port=None), virt_type="qemu"))
    assert args[1] == "user,id=dvnet0,restrict=on,ipv6=off"


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_a_guarded_vm_has_its_card_and_slirp_on_the_two_sides_of_the_guard(virt_type):
    args = qemu_args(build_domain_xml(GUARDED, virt_type=virt_type))
    nets = netdevs(args)
    stream = {"server": "off", "addr.type": "unix"}
    assert nets["dvnet0"] == (
        "stream",
        {"id": "dvnet0", **stream, "addr.path": "/run/dockvisor/net/web.sock"},
    )
    assert nets["dvguard"] == (
        "stream",
        {"id": "dvguard", **stream, "addr.path": "/run/dockvisor/net/web.slirp.sock"},
    )
    # slirp is not restricted (the guard is), keeps the forward, and meets only the guard
    assert nets["dvslirp"] == (
        "user",
        {"id": "dvslirp", "ipv6": "off", "hostfwd": "tcp:127.0.0.1:41007-:2375"},
    )
    hubs = {opts["netdev"]: opts["hubid"] for kind, opts in nets.values() if kind == "hubport"}
    assert hubs == {"dvslirp": "0", "dvguard": "0"}
    assert card(args)[1]["netdev"] == "dvnet0"
    assert args.count("-device") == 1


def test_the_slirp_side_of_the_guard_is_beside_the_card_side():
    assert guard_slirp_socket("/run/dockvisor/net/web.sock") == "/run/dockvisor/net/web.slirp.sock"


def test_a_comma_in_the_socket_path_is_doubled_for_qemu_and_read_back():
    odd = replace(VM, nic_socket="/run/a,b/web.sock")
    xml = build_domain_xml(odd, virt_type="qemu")
    assert "addr.path=/run/a,,b/web.sock" in qemu_args(xml)[-3]
    assert parse_domain_xml(xml).config.nic_socket == "/run/a,b/web.sock"


@pytest.mark.parametrize("virt_type", ["test", "xen"])
def test_no_qemu_commandline_off_qemu(virt_type):
    assert qemu_args(build_domain_xml(VM, virt_type=virt_type)) == []


def test_templates_get_no_network():
    xml = build_domain_xml(TEMPLATE, virt_type="qemu")
    assert qemu_args(xml) == []
    assert ET.fromstring(xml).find("devices/interface") is None


def test_xen_vm_gets_a_network_interface_with_its_mac():
    root = ET.fromstring(build_domain_xml(VM, virt_type="xen"))
    assert root.find("devices/interface/mac").get("address") == VM.mac
    assert root.find("devices/disk/target").get("dev") == "xvda"


def kernel_cmdline(config, virt_type="qemu"):
    return ET.fromstring(build_domain_xml(config, virt_type=virt_type)).findtext("os/cmdline")


def test_vm_kernel_cmdline_tells_the_guest_its_name_and_docker_port():
    words = kernel_cmdline(VM).split()
    assert words[:3] == ["console=ttyS0", "root=/dev/vda", "rw"]
    assert "dockvisor.hostname=web" in words
    assert "dockvisor.docker_port=2375" in words


def test_template_kernel_cmdline_is_left_alone():
    assert kernel_cmdline(TEMPLATE) == "console=ttyS0 root=/dev/vda rw"


def test_vm_without_kernel_boots_from_disk():
    root = ET.fromstring(build_domain_xml(replace(VM, kernel=None, initrd=None), virt_type="qemu"))
    assert root.find("os/boot").get("dev") == "hd"
    assert root.find("os/cmdline") is None


def test_vcpu_zero_is_fixed_and_the_others_hotpluggable():
    root = ET.fromstring(build_domain_xml(VM, virt_type="qemu"))
    vcpu = root.find("vcpu")
    assert (vcpu.text, vcpu.get("current")) == ("4", "2")
    each = root.findall("vcpus/vcpu")
    assert [v.get("hotpluggable") for v in each] == ["no", "yes", "yes", "yes"]
    assert [v.get("enabled") for v in each].count("yes") == VM.vcpus
    assert [v.get("id") for v in each] == ["0", "1", "2", "3"]


def test_xen_has_no_per_vcpu_list():
    root = ET.fromstring(build_domain_xml(VM, virt_type="xen"))
    assert root.find("vcpus") is None
    assert root.find("vcpu").get("current") == "2"


def test_template_disk_is_readonly_and_vm_disk_is_not():
    def readonly(config):
        return ET.fromstring(build_domain_xml(config, virt_type="qemu")).find(
            "devices/disk/readonly"
        )

    assert readonly(TEMPLATE) is not None
    assert readonly(VM) is None


def test_memory_is_written_in_kib():
    root = ET.fromstring(build_domain_xml(VM, virt_type="qemu"))
    assert root.find("memory").get("unit") == "KiB"
    assert root.findtext("memory") == str(2 * GiB // KiB)
    assert root.find("currentMemory").get("unit") == "KiB"
    assert root.findtext("currentMemory") == str(GiB // KiB)


def test_with_network_moves_the_port_and_changes_nothing_else():
    xml = build_domain_xml(VM, virt_type="qemu", console_log="/tmp/web.log")
    moved = with_network(xml, host_port=43999, nic_socket=None)
    assert moved == xml.replace("41007", "43999")
    state = parse_domain_xml(moved)
    assert state.config == replace(VM, docker_host_port=43999)
    assert state.console_log == "/tmp/web.log"
    assert "hostfwd=tcp:127.0.0.1:43999-:2375" in qemu_args_of(moved)[1]


def test_with_network_moves_a_vm_between_isolated_and_guarded():
    isolated = build_domain_xml(VM, virt_type="qemu")
    guarded = with_network(isolated, host_port=41007, nic_socket=GUARDED.nic_socket)
    assert parse_domain_xml(guarded).config == GUARDED
    assert qemu_args_of(guarded) == qemu_args_of(build_domain_xml(GUARDED, virt_type="qemu"))
    back = with_network(guarded, host_port=41007, nic_socket=None)
    assert back == isolated


def test_with_network_restricts_the_slirp_of_a_vm_defined_before_the_guard():
    """VMs (and snapshots) defined by earlier versions have slirp without restrict=on,
    whose gateway is the host's 127.0.0.1; their next start must not keep it."""
    old = build_domain_xml(VM, virt_type="qemu").replace(
        "user,id=dvnet0,restrict=on,ipv6=off,", "user,id=dvnet0,"
    )
    assert qemu_args_of(old)[1] == "user,id=dvnet0,hostfwd=tcp:127.0.0.1:41007-:2375"
    assert parse_domain_xml(old).config == VM
    fixed = with_network(old, host_port=41007, nic_socket=None)
    assert qemu_args_of(fixed)[1].split(",")[:3] == ["user", "id=dvnet0", "restrict=on"]


def test_with_network_keeps_the_domain_type_and_what_it_does_not_model():
    xml = build_domain_xml(VM, virt_type="kvm").replace(
        "<devices>", "<devices><controller type='usb' model='none'/>"
    )
    moved = with_network(xml, host_port=43999, nic_socket=GUARDED.nic_socket)
    root = ET.fromstring(moved)
    assert root.get("type") == "kvm"
    assert root.find("devices/controller").get("model") == "none"


def test_a_domain_off_qemu_has_no_qemu_args():
    assert qemu_args_of(build_domain_xml(VM, virt_type="test")) == []


FOREIGN = """\
<domain type='kvm'>
  <name>legacy</name>
  <uuid>0b7a3d52-6f0e-4c1e-8a7f-2f9f7a1c9e11</uuid>
  <memory unit='{max_unit}'>{max_value}</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/debian.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/srv/images/legacy.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


@pytest.mark.parametrize(("max_unit", "max_value"), [("KiB", 2097152), ("MiB", 2048), ("GiB", 2)])
def test_foreign_domain_is_read_but_not_managed(max_unit, max_value):
    state = parse_domain_xml(FOREIGN.format(max_unit=max_unit, max_value=max_value))
    config = state.config
    assert config.managed is False
    assert config.name == "legacy"
    assert state.uuid == "0b7a3d52-6f0e-4c1e-8a7f-2f9f7a1c9e11"
    assert (config.vcpus, config.max_vcpus) == (1, 2)
    assert (config.memory, config.max_memory) == (GiB, 2 * GiB)
    assert (config.disk_path, config.disk_format) == ("/srv/images/legacy.qcow2", "qcow2")
    assert config.disk_readonly is False
    assert config.template is None and config.disk_mode is None
    assert config.docker_guest_port is None and config.docker_host_port is None


def test_foreign_domain_without_current_values_uses_the_maximums():
    xml = """<domain type='qemu'><name>bare</name>
        <memory unit='MiB'>512</memory><vcpu>3</vcpu></domain>"""
    config = parse_domain_xml(xml).config
    assert (config.vcpus, config.max_vcpus) == (3, 3)
    assert (config.memory, config.max_memory) == (512 * MiB, 512 * MiB)
    assert config.disk_path == "" and config.managed is False


def test_memory_without_unit_is_kib():
    xml = "<domain type='test'><name>t</name><memory>524288</memory></domain>"
    assert parse_domain_xml(xml).config.max_memory == 512 * MiB


def test_random_mac_is_in_qemus_local_range_and_random():
    macs = {random_mac() for _ in range(20)}
    assert len(macs) > 1
    for mac in macs:
        assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)


def test_each_config_gets_its_own_mac_by_default():
    a = DomainConfig("a", "vm", 1, 1, GiB, GiB, "/a.qcow2")
    b = DomainConfig("b", "vm", 1, 1, GiB, GiB, "/b.qcow2")
    assert a.mac != b.mac


# -- the config drive -------------------------------------------------------------------

WITH_DRIVE = replace(
    VM,
    docker_guest_port=2376,
    engine_name="0123456789abcdef.vm.dockvisor",
    config_drive="/var/lib/dockvisor/web-5e6f7a8b.cidata.iso",
    volumes=("web-1a2b3c4d.qcow2", "web-5e6f7a8b.cidata.iso"),
)


def test_the_config_drive_is_a_second_read_only_raw_disk():
    root = ET.fromstring(build_domain_xml(WITH_DRIVE, virt_type="qemu"))
    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    drive = disks[1]
    assert drive.find("source").get("file") == WITH_DRIVE.config_drive
    assert drive.find("driver").get("type") == "raw"
    assert drive.find("readonly") is not None
    assert disks[0].find("readonly") is None


def test_the_engine_name_and_drive_survive_a_roundtrip_and_the_vm_disk_stays_vda():
    back = roundtrip(WITH_DRIVE, "qemu")
    assert back.engine_name == WITH_DRIVE.engine_name
    assert back.config_drive == WITH_DRIVE.config_drive
    assert back.disk_path == VM.disk_path  # not the drive, though both are disks
    assert back.volumes == WITH_DRIVE.volumes


def test_a_vm_without_a_drive_has_one_disk_and_no_engine_name():
    root = ET.fromstring(build_domain_xml(VM, virt_type="qemu"))
    assert len(root.findall("devices/disk")) == 1
    assert roundtrip(VM, "qemu").engine_name is None


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_a_qemu_vm_has_a_screen_reached_only_through_libvirt(virt_type):
    devices = ET.fromstring(build_domain_xml(VM, virt_type=virt_type)).find("devices")
    (graphics,) = devices.findall("graphics")
    assert graphics.get("type") == "vnc"
    # Listening nowhere: no TCP port (autoport, 0.0.0.0 or 127.0.0.1), no socket file.
    assert [listen.attrib for listen in graphics.findall("listen")] == [{"type": "none"}]
    assert not {"port", "autoport", "listen", "socket", "passwd"} & set(graphics.attrib)
    (video,) = devices.findall("video")
    assert video.find("model").get("type") == "vga"
    # The serial port the serial console opens stays the first console.
    assert devices.find("serial").get("type") == "pty"
    assert devices.find("console").get("type") == "pty"


@pytest.mark.parametrize("virt_type", ["test", "xen"])
def test_no_screen_off_qemu(virt_type):
    devices = ET.fromstring(build_domain_xml(VM, virt_type=virt_type)).find("devices")
    assert devices.find("graphics") is None and devices.find("video") is None


def test_templates_get_no_screen():
    devices = ET.fromstring(build_domain_xml(TEMPLATE, virt_type="qemu")).find("devices")
    assert devices.find("graphics") is None and devices.find("video") is None


def test_with_network_keeps_the_screen():
    xml = build_domain_xml(GUARDED, virt_type="qemu")
    moved = ET.fromstring(with_network(xml, host_port=41099, nic_socket=None))
    assert [g.attrib for g in moved.iter("graphics")] == [{"type": "vnc"}]
