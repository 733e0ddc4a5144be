"""Storage manager plugins: the SM records, their features, what an SR may do by them.

xapi makes one SM record per storage driver from what the driver declares
(ocaml/xapi/xapi_sm.ml create_from_query_result): `features` maps each capability it
knows (ocaml/xapi/smint.ml string_to_capability_table; "NAME/N" gives version N, an
unknown name such as ATOMIC_PAUSE is dropped) to its version, and the deprecated
`capabilities` lists the same names. An SR's type names its SM (SM.type = SR.type).

What the simulator's drivers declare is the CAPABILITIES list of xapi-project/sm:
"lvm" is LVHDSR (drivers/LVMSR runs libs/sm/drivers/LVHDSR.py), "ext" is EXTSR
(libs/sm/drivers/EXTSR.py, VHD files: thin), "iso" is ISOSR. None of them declares
VDI_RESIZE_ONLINE (LVHDSR.resize: "We only support offline resize"); older or
third-party drivers did (the raw LVMSR of XCP 1.x, RBDSR), which the back door
XapiSimulator.set_sm_features models.

Rules that follow from the features:
- SR.allowed_operations: ocaml/xapi/xapi_sr_operations.ml valid_operations: every
  storage operation, minus those sm_cap_table ties to a feature the SM lacks
  (SR_OPERATION_NOT_SUPPORTED [sr]), minus destroy/forget while a PBD is attached
  (SR_HAS_PBD) and destroy while it holds managed VDIs (SR_NOT_EMPTY).
- A VDI operation: ocaml/xapi/xapi_vdi.ml feature_of_op and check_sm_feature_error
  (SR_OPERATION_NOT_SUPPORTED [sr] without the feature).
- Thin or thick: an SM declaring THIN_PROVISIONING (EXTSR, FileSR), or an LVHD SR whose
  sm_config says allocation=thin (LVHDSR.load), allocates on write.
"""

from __future__ import annotations

from .store import Store

KNOWN_FEATURES = frozenset(
    {
        "SR_CREATE", "SR_DELETE", "SR_ATTACH", "SR_DETACH", "SR_SCAN", "SR_PROBE",
        "SR_UPDATE", "SR_SUPPORTS_LOCAL_CACHING", "SR_METADATA", "SR_TRIM", "SR_MULTIPATH",
        "SR_CACHING", "SR_STATS", "VDI_CREATE", "VDI_DELETE", "VDI_ATTACH", "VDI_DETACH",
        "VDI_MIRROR", "VDI_MIRROR_IN", "VDI_RESIZE", "VDI_RESIZE_ONLINE", "VDI_CLONE",
        "VDI_SNAPSHOT", "VDI_ACTIVATE", "VDI_ACTIVATE_READONLY", "VDI_DEACTIVATE",
        "VDI_UPDATE", "VDI_INTRODUCE", "VDI_GENERATE_CONFIG", "VDI_ATTACH_OFFLINE",
        "VDI_RESET_ON_BOOT", "VDI_CONFIG_CBT", "VDI_COMPOSE", "LARGE_VDI",
        "THIN_PROVISIONING", "VDI_READ_CACHING", "VDI_REVERT",
    }
)  # fmt: skip

# type -> (driver name, CAPABILITIES as the driver declares them)
DRIVERS: dict[str, tuple[str, list[str]]] = {
    "lvm": (
        "Local VHD on LVM",
        ["SR_PROBE", "SR_UPDATE", "SR_TRIM", "VDI_CREATE", "VDI_DELETE", "VDI_ATTACH",
         "VDI_DETACH", "VDI_MIRROR", "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE",
         "ATOMIC_PAUSE", "VDI_RESET_ON_BOOT/2", "VDI_UPDATE", "VDI_CONFIG_CBT",
         "VDI_ACTIVATE", "VDI_DEACTIVATE"],
    ),
    "ext": (
        "Local EXT3 VHD",
        ["SR_PROBE", "SR_UPDATE", "SR_SUPPORTS_LOCAL_CACHING", "VDI_CREATE", "VDI_DELETE",
         "VDI_ATTACH", "VDI_DETACH", "VDI_UPDATE", "VDI_CLONE", "VDI_SNAPSHOT", "VDI_RESIZE",
         "VDI_MIRROR", "VDI_GENERATE_CONFIG", "VDI_RESET_ON_BOOT/2", "ATOMIC_PAUSE",
         "VDI_CONFIG_CBT", "VDI_ACTIVATE", "VDI_DEACTIVATE", "THIN_PROVISIONING",
         "VDI_READ_CACHING"],
    ),
    "iso": (
        "ISO",
        ["VDI_CREATE", "VDI_DELETE", "VDI_ATTACH", "VDI_DETACH", "SR_SCAN", "SR_ATTACH",
         "SR_DETACH"],
    ),
}  # fmt: skip

# xapi_sr_operations.ml all_ops and sm_cap_table (the feature each operation needs).
SR_OPERATIONS = [
    "scan", "destroy", "forget", "plug", "unplug", "vdi_create", "vdi_destroy",
    "vdi_resize", "vdi_clone", "vdi_snapshot", "vdi_mirror", "vdi_enable_cbt",
    "vdi_disable_cbt", "vdi_data_destroy", "vdi_list_changed_blocks", "vdi_set_on_boot",
    "vdi_introduce", "vdi_revert", "update", "pbd_create", "pbd_destroy",
]  # fmt: skip
SR_OPERATION_FEATURE = {
    "vdi_create": "VDI_CREATE",
    "vdi_destroy": "VDI_DELETE",
    "vdi_resize": "VDI_RESIZE",
    "vdi_introduce": "VDI_INTRODUCE",
    "vdi_mirror": "VDI_MIRROR",
    "vdi_enable_cbt": "VDI_CONFIG_CBT",
    "vdi_disable_cbt": "VDI_CONFIG_CBT",
    "vdi_data_destroy": "VDI_CONFIG_CBT",
    "vdi_list_changed_blocks": "VDI_CONFIG_CBT",
    "vdi_set_on_boot": "VDI_RESET_ON_BOOT",
    "update": "SR_UPDATE",
    "vdi_revert": "VDI_REVERT",
    "vdi_snapshot": "VDI_SNAPSHOT",
}
# xapi_vdi.ml feature_of_op, for the VDI operations the simulator lists.
VDI_OPERATION_FEATURE: dict[str, str | None] = {
    "clone": "VDI_CLONE",
    "copy": None,
    "destroy": "VDI_DELETE",
    "forget": None,
    "generate_config": "VDI_GENERATE_CONFIG",
    "resize": "VDI_RESIZE",
    "resize_online": "VDI_RESIZE_ONLINE",
    "snapshot": "VDI_SNAPSHOT",
    "update": "VDI_UPDATE",
}


def parse_features(declared: list[str]) -> dict[str, str]:
    """Smint.Feature.parse_string_int64: known names only, "NAME/N" is version N (at
    least 1), a bare name version 1; SM.features sends the versions as int64 (strings)."""
    out: dict[str, str] = {}
    for text in declared:
        name, _, version = text.partition("/")
        if name not in KNOWN_FEATURES or name in out:
            continue
        out[name] = str(max(1, int(version))) if version.isdigit() else "1"
    return out


def register_drivers(store: Store) -> None:
    for sr_type, (name, declared) in DRIVERS.items():
        features = parse_features(declared)
        store.create(
            "SM",
            {
                "name_label": name,
                "type": sr_type,
                "vendor": "Citrix Systems Inc",
                "version": "1.0",
                "required_api_version": "1.0",
                "capabilities": sorted(features),
                "features": features,
                "driver_filename": f"/opt/xensource/sm/{sr_type.upper()}SR",
            },
        )


def sm_of(store: Store, sr_type: str) -> str | None:
    return next((r for r, sm in store.all("SM").items() if sm["type"] == sr_type), None)


def features_of_sr(store: Store, sr: str) -> dict[str, str]:
    """xapi_sr_operations.ml features_of_sr_internal: the SM of the SR's type (none: no
    features)."""
    sm = sm_of(store, store.get("SR", sr)["type"])
    return dict(store.get("SM", sm)["features"]) if sm else {}


def set_features(store: Store, sr_type: str, declared: list[str]) -> None:
    """What the driver of `sr_type` declares from now on; its SRs follow (their VDIs:
    storage.update_vdi_operations)."""
    sm = sm_of(store, sr_type)
    assert sm is not None, f"no SM of type {sr_type}"
    features = parse_features(declared)
    store.update("SM", sm, features=features, capabilities=sorted(features))
    for sr, record in store.all("SR").items():
        if record["type"] == sr_type:
            update_sr_operations(store, sr)


def is_thin(store: Store, sr: str) -> bool:
    record = store.get("SR", sr)
    return (
        "THIN_PROVISIONING" in features_of_sr(store, sr)
        or record["sm_config"].get("allocation") == "thin"
    )


def update_sr_operations(store: Store, sr: str) -> None:
    record = store.get("SR", sr)
    features = features_of_sr(store, sr)
    if record["is_tools_sr"]:  # check_sm_features: the tools SR's VDIs stay
        features = {k: v for k, v in features.items() if k not in ("VDI_CREATE", "VDI_DELETE")}
    attached = any(p["SR"] == sr and p["currently_attached"] for p in store.all("PBD").values())
    managed = any(v["SR"] == sr and v["managed"] for v in store.all("VDI").values())
    ops = []
    for op in SR_OPERATIONS:
        needs = SR_OPERATION_FEATURE.get(op)
        if needs is not None and needs not in features:
            continue
        if op in ("destroy", "forget") and attached:
            continue
        if op == "destroy" and managed:
            continue
        ops.append(op)
    if record["allowed_operations"] != ops:
        store.update("SR", sr, allowed_operations=ops)
