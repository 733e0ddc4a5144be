"""The API's request and response bodies (they make its OpenAPI description)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
SNAPSHOT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_BYTES = 2**50  # sizes above a petabyte are not sizes
MAX_ID = 2**31 - 1  # ids are 32-bit integers in every database we support


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class Strict(BaseModel):
    """A request body: no unknown fields, no type coercion (true is not 1), no NUL bytes."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _has_nul(data):
            raise ValueError("text may not contain NUL bytes")
        return data


class Problem(BaseModel):
    """An error, as application/problem+json (RFC 9457) with a stable `code`."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    errors: list[dict[str, Any]] | None = None


class ApiInfo(BaseModel):
    api_version: str
    server_version: str
    extensions: list[str]


class LoginRequest(Strict):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class LoginResponse(BaseModel):
    user: str
    csrf_token: str


class WhoAmI(BaseModel):
    id: int
    name: str
    groups: list[int]
    via: str


class UserOut(BaseModel):
    id: int
    name: str
    disabled: bool


class UserCreate(Strict):
    name: str = Field(pattern=NAME)
    password: str = Field(min_length=8, max_length=1024)
    admin: bool = False


class GroupOut(BaseModel):
    id: int
    name: str
    members: list[str]


class GroupCreate(Strict):
    name: str = Field(pattern=NAME)
    members: list[str] = Field(default_factory=list, max_length=1000)


class GroupMembers(Strict):
    members: list[str] = Field(max_length=1000)


class RoleOut(BaseModel):
    name: str
    privileges: list[str]
    builtin: bool
    description: str


class RoleCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.-]+$")
    privileges: list[str] = Field(max_length=100)
    description: str = Field(default="", max_length=500)


class AclOut(BaseModel):
    id: int
    subject: str
    path: str
    role: str
    propagate: bool


class AclCreate(Strict):
    subject: str = Field(min_length=3, max_length=80, pattern=r"^(user|group):")
    path: str = Field(min_length=1, max_length=255)
    role: str = Field(min_length=1, max_length=64)
    propagate: bool = True


class TokenOut(BaseModel):
    id: int
    name: str
    user: str
    created: datetime
    expires: datetime | None
    revoked: bool
    last_used: datetime | None


class TokenCreate(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class TokenCreated(TokenOut):
    token: str = Field(description="The secret: shown this once, never again")


class HostOut(BaseModel):
    id: int
    name: str
    uri: str
    family: str = Field(description="The adapter family: libvirt or xapi")
    state: Literal["connected", "unreachable", "unknown"] = Field(
        description="Whether the host answered the last time dockvisor asked it "
        "(connections, the periodic reconcile, its events)"
    )
    state_since: datetime
    capabilities: list[str] | None = Field(
        default=None,
        description="What the host can do (live-vcpus, snapshots, memory-snapshots, "
        "clone-running, guest-addresses, metrics, serial-console, events...); null while "
        "it does not answer. An action it lacks is refused up front, naming the host.",
    )


class HostCreate(Strict):
    name: str = Field(min_length=1, max_length=64)
    uri: str = Field(min_length=1, max_length=255)
    user: str | None = Field(
        None, min_length=1, max_length=255, description="A XAPI pool's user (write-only)"
    )
    password: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="A XAPI pool's password: stored encrypted, never returned (write-only)",
    )
    certificate: str | None = Field(
        None,
        max_length=65536,
        description="The pool's HTTPS certificate (PEM) to trust when no known authority "
        "signed it (a XenServer's own); write-only",
    )


class PoolOut(BaseModel):
    id: int
    name: str


class PoolCreate(Strict):
    name: str = Field(pattern=NAME)


class TemplateSizesOut(BaseModel):
    min_vcpus: int
    min_memory: int
    default_vcpus: int | None
    default_memory: int | None
    default_disk: int | None


class TemplateOriginOut(BaseModel):
    catalog: str
    product: str
    version: str
    sha256: str


class TemplateOut(BaseModel):
    host_id: int
    name: str
    description: str
    disk_size: int = Field(description="Bytes: the smallest disk its VMs can have")
    docker_ready: bool
    builtin: bool
    sizes: TemplateSizesOut
    origin: TemplateOriginOut | None = Field(
        default=None, description="The catalog it was pulled from, if any"
    )
    newer_version: str | None = Field(
        default=None, description="A newer version its catalog offers (as last fetched)"
    )
    spares_kept: int = Field(default=0, description="Warm spares of it the host keeps")

    @classmethod
    def of(cls, host_id: int, t: Any, newer_version: str | None = None) -> TemplateOut:
        return cls(
            host_id=host_id, name=t.name, description=t.description, disk_size=t.disk_size,
            docker_ready=t.docker_ready, builtin=t.builtin,
            sizes=TemplateSizesOut(**asdict(t.sizes)),
            origin=TemplateOriginOut(**asdict(t.origin)) if t.origin else None,
            newer_version=newer_version, spares_kept=t.spares_kept,
        )  # fmt: skip


class TemplateCreate(Strict):
    host_id: int = Field(ge=1, le=MAX_ID)
    name: str = Field(pattern=NAME)
    disk: str = Field(
        min_length=1,
        max_length=4096,
        description="A file in the server's template directory (<data dir>/template-images)",
    )
    kernel: str | None = Field(default=None, max_length=4096)
    initrd: str | None = Field(default=None, max_length=4096)
    cmdline: str | None = Field(default=None, max_length=2048)
    docker_port: int | None = Field(default=2376, ge=1, le=65535)
    description: str = Field(default="", max_length=500)


class ResourcesOut(BaseModel):
    vcpus: int
    memory: int
    disk: int
    vms: int


class LimitsIn(Strict):
    vcpus: int | None = Field(default=None, ge=0, le=100000)
    memory: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    disk: int | None = Field(default=None, ge=0, le=MAX_BYTES)
    vms: int | None = Field(default=None, ge=0, le=100000)


class LimitsOut(BaseModel):
    vcpus: int | None
    memory: int | None
    disk: int | None
    vms: int | None


class ResourceSetIn(Strict):
    name: str = Field(pattern=NAME)
    limits: LimitsIn = Field(default_factory=LimitsIn)
    templates: list[str] = Field(default_factory=list, max_length=100)
    host_ids: list[int] = Field(default_factory=list, max_length=100)
    subjects: list[str] = Field(default_factory=list, max_length=1000)
    count_snapshots: bool = False


class ResourceSetOut(BaseModel):
    id: int
    name: str
    limits: LimitsOut
    usage: ResourcesOut
    templates: list[str]
    host_ids: list[int]
    subjects: list[str]
    count_snapshots: bool


class RecomputeOut(BaseModel):
    added: list[str]
    removed: list[str]
    updated: list[str]
    unreachable: list[str]
    drift: dict[str, dict[str, dict[str, int]]]


class VmOut(BaseModel):
    id: str
    name: str
    host_id: int
    pool_id: int | None
    resource_set_id: int | None
    state: str
    vcpus: int
    max_vcpus: int
    memory: int
    max_memory: int
    disk: int
    snapshots: int
    template: str | None
    docker_ready: bool
    managed: bool
    clean_snapshot: str | None = Field(
        default=None, description="The snapshot marked as the VM's clean state"
    )


class CleanSnapshot(Strict):
    name: str | None = Field(
        pattern=SNAPSHOT, description="A snapshot of the VM, or null for no clean state"
    )


class VmCreate(Strict):
    name: str = Field(pattern=NAME)
    template: str = Field(default="docker-ready", pattern=NAME)
    vcpus: int | None = Field(
        default=None, ge=1, le=1024, description="Default: the template's default vCPUs"
    )
    memory: int | None = Field(
        default=None, ge=1, le=MAX_BYTES, description="Bytes; default: the template's default"
    )
    max_vcpus: int | None = Field(default=None, ge=1, le=1024)
    max_memory: int | None = Field(default=None, ge=1, le=MAX_BYTES)
    disk: int | None = Field(
        default=None, ge=1, le=MAX_BYTES,
        description="Bytes, a whole number of MiB (default: the template's default disk)",
    )  # fmt: skip
    full: bool = False
    start: bool = True
    cold: bool = Field(
        default=False,
        description="Boot it even where a warm spare of the template could be resumed",
    )
    host_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    resource_set_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    pool_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class VmResize(Strict):
    vcpus: int | None = Field(default=None, ge=1, le=1024)
    memory: int | None = Field(default=None, ge=1, le=MAX_BYTES)
    disk: int | None = Field(
        default=None, ge=1, le=MAX_BYTES, description="Bytes: the disk only grows"
    )


class VmState(Strict):
    action: Literal["start", "stop", "kill", "reboot"]


class VmClone(Strict):
    name: str = Field(pattern=NAME)
    full: bool = False
    start: bool = False


class SnapshotCreate(Strict):
    name: str = Field(pattern=SNAPSHOT)
    description: str = Field(default="", max_length=500)
    clean: bool = Field(default=False, description="Also mark it as the VM's clean state")


class SnapshotOut(BaseModel):
    name: str
    created: datetime
    power_state: str
    with_memory: bool
    description: str
    parent: str | None
    current: bool
    disk_size: int | None = Field(
        default=None, description="Bytes: the disk's size a revert returns it to"
    )


class EndpointOut(BaseModel):
    docker_host: str
    host: str
    port: int
    tls: bool


class TaskOut(BaseModel):
    id: str
    kind: str
    object_type: str
    object_id: str
    requester: str
    state: Literal["pending", "running", "succeeded", "failed"]
    progress: float
    step: str
    error: str | None
    error_code: str | None
    result: dict[str, Any] | None
    created: datetime
    started: datetime | None
    finished: datetime | None


class AuditOut(BaseModel):
    id: int
    time: datetime
    actor: str
    action: str
    object: str
    result: str
    detail: str
    digest: str


class AuditVerifyOut(BaseModel):
    entries: int
    ok: bool
    broken_at: int | None = Field(description="id of the first entry concerned")
    reason: str
    condition: Literal[
        "intact",
        "unkeyed",
        "tampered",
        "unconfirmed",
        "head-missing",
        "key-missing",
        "key-mismatch",
    ] = Field(
        description="intact; unkeyed (no key yet: public formula only); tampered (an "
        "entry changed, inserted or removed); unconfirmed (entries verify but the head "
        "file does not list them yet: a crash between the two writes); head-missing, "
        "key-missing, key-mismatch (cannot be checked)"
    )
    keyed_from: int | None = Field(
        description="id of the first keyed entry (those before it use the public formula)"
    )


# -- Docker inside VMs ----------------------------------------------------------------------

CONTAINER_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"


class PortIn(Strict):
    host_port: int = Field(ge=1, le=65535, description="Port on the VM")
    container_port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = Field(default="0.0.0.0", max_length=45, pattern=r"^[0-9a-fA-F:.]+$")


class ContainerCreate(Strict):
    image: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$")
    command: list[str] | None = Field(default=None, max_length=256)
    name: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$")
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    ports: list[PortIn] = Field(default_factory=list, max_length=64)
    volumes: list[str] = Field(
        default_factory=list, max_length=64, description='"SRC:DST[:ro]", or "DST" (anonymous)'
    )
    restart: str = Field(
        default="no", pattern=r"^(no|always|unless-stopped|on-failure(:\d{1,4})?)$"
    )
    cpus: float | None = Field(default=None, gt=0, le=1024)
    memory: int | None = Field(default=None, ge=1, le=MAX_BYTES, description="Bytes (>= 6 MiB)")
    tty: bool = False
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)
    start: bool = True


class ContainerPort(BaseModel):
    host_ip: str | None
    host_port: int | None
    container_port: int | None
    protocol: str


class ContainerOut(BaseModel):
    id: str
    name: str
    image: str
    command: str
    state: str
    status: str
    created: int
    ports: list[ContainerPort]
    labels: dict[str, str]


class ContainerBrief(BaseModel):
    id: str
    name: str
    image: str
    state: str
    exit_code: int | None


class ExecRequest(Strict):
    command: list[str] = Field(min_length=1, max_length=256)
    env: dict[str, str] | None = Field(default=None, max_length=256)
    workdir: str | None = Field(default=None, max_length=4096)
    user: str | None = Field(default=None, max_length=64)


class ExecOut(BaseModel):
    exit_code: int
    stdout: str = Field(description="The output as UTF-8 text (bytes that are not, replaced)")
    stderr: str
    stdout_base64: str = Field(description="The output's exact bytes, base64-encoded")
    stderr_base64: str


class ImageOut(BaseModel):
    id: str
    tags: list[str]
    size: int
    created: int


class ImagesLoaded(BaseModel):
    images: list[str]


class DockerEnvironment(BaseModel):
    """How to point the stock docker CLI at a VM through dockvisor."""

    vm: str
    docker_host: str = Field(description="DOCKER_HOST: the engine gateway, with the VM's path")
    header: str = Field(description="The header each request carries: Authorization")
    api_version: str


# -- metrics ---------------------------------------------------------------------------------


class MetricsSeries(BaseModel):
    """A VM's graphs: parallel lists, one entry per sample, in time order. A gap (the VM
    was not running, or restarted) is a row of nulls; a rate is null at the first sample
    after one."""

    time: list[float] = Field(description="When each sample was taken, seconds since the epoch")
    cpu_percent: list[float | None] = Field(description="CPU used, % of the VM's vCPUs")
    memory_used: list[int | None] = Field(description="Bytes the guest uses")
    memory_total: list[int | None] = Field(description="Bytes the VM has")
    disk_read: list[float | None] = Field(description="Bytes per second, all disks")
    disk_write: list[float | None] = Field(description="Bytes per second, all disks")
    net_rx: list[float | None] = Field(description="Bytes per second received")
    net_tx: list[float | None] = Field(description="Bytes per second sent")


class VmMetricsOut(BaseModel):
    period: float = Field(description="Seconds between two samples")
    series: MetricsSeries


class ContainerUsageOut(BaseModel):
    """A container's CPU and memory now, as `docker stats` counts them."""

    id: str
    name: str
    cpu_percent: float | None = Field(description="% of one CPU: up to 100 x online_cpus")
    memory_used: int | None = Field(description="Bytes, without page cache it can drop")
    memory_limit: int | None = Field(description="Bytes: its limit, or the VM's memory")
    online_cpus: int | None


class CatalogIn(Strict):
    name: str = Field(pattern=NAME)
    url: str = Field(min_length=8, max_length=2048, description="http(s) URL of the catalog root")
    public_key: str = Field(
        min_length=10, max_length=128, description="The publisher's key: ed25519:BASE64"
    )


class CatalogOut(BaseModel):
    name: str
    url: str
    public_key: str
    updated: datetime | None = Field(description="Its index's time at the last fetch")
    fetched: datetime | None = Field(description="When it was last fetched")
    newest: dict[str, str] = Field(description="Template -> newest version, as last fetched")


class CatalogTemplateOut(BaseModel):
    catalog: str
    name: str
    version: str
    arch: str
    description: str
    docker_version: str | None
    docker_port: int | None
    features: list[str]
    sizes: TemplateSizesOut
    min_disk: int = Field(description="Bytes: the smallest disk its VMs can have")
    download_size: int = Field(description="Bytes to download (all its files)")
    published: datetime


class CatalogSearchOut(BaseModel):
    templates: list[CatalogTemplateOut]
    problems: list[str] = Field(description="Catalogs that could not be read, and why")


class TemplatePull(Strict):
    reference: str = Field(
        min_length=3, max_length=200, description="CATALOG:NAME or CATALOG:NAME:VERSION"
    )
    as_name: str | None = Field(default=None, pattern=NAME)
    host_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    all_hosts: bool = False


class TemplateUpdate(Strict):
    host_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class TemplateWarm(Strict):
    spares: int = Field(ge=0, le=32, description="Warm spares the host keeps (0: none)")
    host_id: int | None = Field(default=None, ge=1, le=MAX_ID)


class SpareOut(BaseModel):
    host_id: int
    name: str
    template: str
    ready: bool
    stale: str | None
    vcpus: int
    max_vcpus: int
    memory: int
    max_memory: int
    disk_size: int
    stored: int
    created: datetime | None
