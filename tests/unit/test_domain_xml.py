import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from dockvisor.domain.model import DiskMode
from dockvisor.domain.sizes import GiB, KiB, MiB
from dockvisor.drivers.libvirt.domain_xml import (
    DomainConfig,
    build_domain_xml,
    parse_domain_xml,
    random_mac,
    with_host_port,
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


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_qemu_vm_forwards_docker_port_on_loopback(virt_type):
    args = qemu_args(build_domain_xml(VM, virt_type=virt_type))
    assert args[0] == "-netdev"
    assert "hostfwd=tcp:127.0.0.1:41007-:2375" in args[1].split(",")
    assert args[2] == "-device"
    nic = args[3].split(",")
    assert nic[0] == "virtio-net-pci"
    assert "addr=0x10" in nic and "mac=52:54:00:ab:cd:ef" in nic


def test_qemu_vm_without_host_port_has_network_but_no_forward():
    args = qemu_args(build_domain_xml(replace(VM, docker_host_port=None), virt_type="qemu"))
    assert args[1] == "user,id=dvnet0"


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


def test_with_host_port_changes_only_the_port():
    xml = build_domain_xml(VM, virt_type="qemu", console_log="/tmp/web.log")
    moved = with_host_port(xml, 43999)
    assert moved == xml.replace("41007", "43999")
    state = parse_domain_xml(moved)
    assert state.config == replace(VM, docker_host_port=43999)
    assert state.console_log == "/tmp/web.log"
    assert "hostfwd=tcp:127.0.0.1:43999-:2375" in qemu_args(moved)[1]


def test_with_host_port_keeps_the_domain_type():
    moved = with_host_port(build_domain_xml(VM, virt_type="kvm"), 43999)
    assert ET.fromstring(moved).get("type") == "kvm"


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
