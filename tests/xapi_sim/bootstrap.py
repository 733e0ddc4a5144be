"""The pool a simulator starts with.

One pool ("sim-pool") whose master is host 0 (address 127.0.0.1) plus `members`
hosts (address ::1); each host has host_metrics, a control domain (dom0, Running,
domid 0) and a console. Storage: the SM records of the drivers sm.py models, "Local
storage", an SR on the master (the pool's default, suspend and crash-dump SR) of type
lvm (thick LVHD, what XCP-ng installs by default) or ext (thin VHD files), and the
"XCP-ng Tools" ISO SR. One network, "Pool-wide network associated with eth0". Two
default templates as XCP-ng ships them in spirit: "Other install media" (no disks:
`<provision/>`) and "Debian Bookworm 12", whose provision spec asks for a 10 GiB disk
with sr="" as the real templates do (clients rewrite sr to an SR uuid before
VM.provision, or provisioning fails with UUID_INVALID ["sr"; ""]). Field values are
plausible, not copied from a live host.
"""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .lifecycle import update_allowed_operations
from .memory import GIB, MIB, refresh_host_metrics, set_overhead
from .sm import register_drivers
from .storage import new_vdi, refresh_sr
from .vm_power import _console
from .wire import NULL_REF, now

SOFTWARE_VERSION = {
    "product_brand": "XCP-ng",
    "product_version": "8.3.0",
    "product_version_text": "8.3",
    "product_version_text_short": "8.3",
    "platform_name": "XCP",
    "platform_version": "3.4.0",
    "build_number": "release/yangtze/master/58",
    "xapi": "24.19",
    "xen": "4.17.4-3",
    "linux": "4.19.0+1",
    "xencenter_min": "2.21",
    "xencenter_max": "2.21",
    "network_backend": "openvswitch",
    "db_schema": "5.775",
}
CPU_INFO = {
    "cpu_count": "8",
    "socket_count": "1",
    "vendor": "GenuineIntel",
    "speed": "2400.000",
    "modelname": "Simulated CPU",
    "family": "6",
    "model": "85",
    "stepping": "7",
    "flags": "fpu de tsc msr pae mce cx8 apic sep mca cmov",
    "features": "",
    "features_pv": "",
    "features_hvm": "",
}
RESTRICTIONS = {
    "DMC": "restrict_dmc",
    "Checkpoint": "restrict_checkpoint",
    "Live_set_vcpus": "restrict_set_vcpus_number_live",
    "VM_start": "restrict_vm_start",
}
TEMPLATE_PLATFORM = {
    "device-model": "qemu-upstream-compat",
    "nx": "true",
    "acpi": "1",
    "apic": "true",
    "pae": "true",
    "viridian": "false",
    "secureboot": "false",
}
DEBIAN_DISKS = (
    '<provision><disk device="0" size="10737418240" sr="" bootable="true" type="system"/>'
    "</provision>"
)


def restrictions(engine: Engine) -> dict[str, str]:
    """pool.restrictions: restrict_<feature> "true" when the feature is off
    (ocaml/xapi-types/features.ml, all features are Negative)."""
    out = {"restrict_vswitch_controller": "false", "restrict_pool_size": "false"}
    for feature, key in RESTRICTIONS.items():
        out[key] = "false" if engine.feature(feature) else "true"
    return out


def _vm(engine: Engine, fields: dict[str, Any]) -> str:
    store = engine.store
    base: dict[str, Any] = {
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "actions_after_softreboot": "soft_reboot",
        "HVM_shadow_multiplier": 1.0,
        "domid": -1,
        "generation_id": "0:0",
        "has_vendor_device": False,
        "metrics": store.create("VM_metrics", {"current_domain_type": "unspecified"}),
    }
    base.update(fields)
    ref = store.create("VM", base)
    set_overhead(store, ref)
    return ref


def _host(engine: Engine, index: int, address: str, memory: int) -> str:
    store = engine.store
    name = f"xcp-ng-sim-{index}"
    metrics = store.create(
        "host_metrics",
        {"memory_total": memory, "memory_free": memory, "live": True, "last_updated": now()},
    )
    host = store.create(
        "host",
        {
            "name_label": name,
            "name_description": "Default install",
            "hostname": name,
            "address": address,
            "metrics": metrics,
            "enabled": True,
            "API_version_major": 2,
            "API_version_minor": 21,
            "API_version_vendor": "XenSource",
            "software_version": dict(SOFTWARE_VERSION),
            "cpu_info": dict(CPU_INFO),
            "capabilities": ["xen-3.0-x86_64", "hvm-3.0-x86_32", "hvm-3.0-x86_64"],
            "sched_policy": "credit",
            "supported_bootloaders": ["pygrub", "eliloader"],
            "edition": "xcp-ng",
            "editions": ["xcp-ng"],
            "display": "enabled",
            "virtual_hardware_platform_versions": [0, 1, 2],
            "tls_verification_enabled": True,
            "memory_overhead": 64 * MIB,
        },
    )
    dom0 = _vm(
        engine,
        {
            "name_label": f"Control domain on host: {name}",
            "name_description": (
                "The domain which manages physical devices and manages other domains"
            ),
            "power_state": "Running",
            "is_control_domain": True,
            "resident_on": host,
            "domid": 0,
            "user_version": 1,
            "memory_static_min": 2 * GIB,
            "memory_dynamic_min": 2 * GIB,
            "memory_dynamic_max": 2 * GIB,
            "memory_static_max": 2 * GIB,
            "memory_target": 2 * GIB,
            "VCPUs_max": 4,
            "VCPUs_at_startup": 4,
            "domain_type": "pv",
            "other_config": {"storage_driver_domain": "", "is_system_domain": "true"},
        },
    )
    vm_metrics = store.get("VM", dom0)["metrics"]
    store.update(
        "VM_metrics",
        vm_metrics,
        memory_actual=2 * GIB,
        VCPUs_number=4,
        current_domain_type="pv",
        start_time=now(),
    )
    _console(store, dom0)
    store.update("host", host, control_domain=dom0)
    return host


def _template(engine: Engine, name: str, description: str, other: dict[str, str]) -> str:
    return _vm(
        engine,
        {
            "name_label": name,
            "name_description": description,
            "is_a_template": True,
            "is_default_template": True,
            "user_version": 1,
            "memory_static_min": 512 * MIB,
            "memory_dynamic_min": GIB,
            "memory_dynamic_max": GIB,
            "memory_static_max": GIB,
            "memory_target": GIB,
            "VCPUs_max": 1,
            "VCPUs_at_startup": 1,
            "HVM_boot_policy": "BIOS order",
            "HVM_boot_params": {"order": "cdn"},
            "platform": dict(TEMPLATE_PLATFORM),
            "domain_type": "hvm",
            "other_config": {"default_template": "true", **other},
            "recommendations": (
                '<restrictions><restriction field="memory-static-max" max="137438953472"/>'
                '<restriction field="vcpus-max" max="32"/></restrictions>'
            ),
        },
    )


LOCAL_SM_CONFIG = {
    "lvm": {"allocation": "thick", "use_vhd": "true", "devserial": "scsi-sim"},
    "ext": {"devserial": "scsi-sim"},
}


def build_pool(
    engine: Engine, members: int, sr_size: int, host_memory: int, sr_type: str = "lvm"
) -> None:
    store = engine.store
    register_drivers(store)
    hosts = [_host(engine, 0, "127.0.0.1", host_memory)]
    hosts += [_host(engine, i + 1, "::1", host_memory) for i in range(members)]
    master = hosts[0]
    local = store.create(
        "SR",
        {
            "name_label": "Local storage",
            "type": sr_type,
            "content_type": "user",
            "physical_size": sr_size,
            "sm_config": dict(LOCAL_SM_CONFIG[sr_type]),
            "other_config": {"i18n-key": "local-storage"},
        },
    )
    tools = store.create(
        "SR",
        {
            "name_label": "XCP-ng Tools",
            "name_description": "XCP-ng Tools ISOs",
            "type": "iso",
            "content_type": "iso",
            "shared": True,
            "is_tools_sr": True,
        },
    )
    store.create("PBD", {"host": master, "SR": local, "currently_attached": True})
    for host in hosts:
        store.create("PBD", {"host": host, "SR": tools, "currently_attached": True})
    refresh_sr(store, local)
    new_vdi(
        store,
        {
            "name_label": "guest-tools.iso",
            "name_description": "XCP-ng VM Tools ISO",
            "SR": tools,
            "virtual_size": 60 * MIB,
            "physical_utilisation": 60 * MIB,
            "type": "user",
            "read_only": True,
            "is_tools_iso": True,
        },
    )
    refresh_sr(store, tools)
    store.create(
        "network",
        {
            "name_label": "Pool-wide network associated with eth0",
            "bridge": "xenbr0",
            "MTU": 1500,
            "managed": True,
            "default_locking_mode": "unlocked",
            "other_config": {"automatic": "true"},
        },
    )
    engine.master = master
    engine.pool = store.create(
        "pool",
        {
            "name_label": "sim-pool",
            "master": master,
            "default_SR": local,
            "suspend_image_SR": local,
            "crash_dump_SR": local,
            "ha_cluster_stack": "xhad",
            "cpu_info": {"cpu_count": str(8 * len(hosts)), "socket_count": str(len(hosts))},
            "restrictions": restrictions(engine),
            "tls_verification_enabled": True,
            "coordinator_bias": True,
            "redo_log_vdi": NULL_REF,
        },
    )
    for host in hosts:
        store.update("host", host, suspend_image_sr=local, crash_dump_sr=local)
    _template(
        engine,
        "Other install media",
        "Template which allows VM installation from install media",
        {"disks": "<provision/>", "install-methods": "cdrom"},
    )
    _template(
        engine,
        "Debian Bookworm 12",
        "To use this template from the CLI, install your VM using vm-install",
        {"disks": DEBIAN_DISKS, "install-methods": "cdrom,nfs,http,ftp", "linux_template": "true"},
    )
    for ref in store.all("VM"):
        update_allowed_operations(store, ref)
    refresh_host_metrics(store)
