"""The template use cases: the built-in Docker-ready template and templates from an
admin's own disk images."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from dockvisor.catalogs.publish import publish_template as publish
from dockvisor.domain.catalog import CatalogTemplate
from dockvisor.domain.model import Template, TemplateSizes, TemplateSpec
from dockvisor.domain.naming import validate_template_name
from dockvisor.domain.sizes import GiB, MiB
from dockvisor.drivers.base import HypervisorDriver, Progress, no_progress
from dockvisor.errors import InvalidInput, NotFound
from dockvisor.guest.image import DEFAULT_DISK, GuestImage, build_image, cached_image
from dockvisor.services import warm
from dockvisor.services.engines import EngineAccess

__all__ = [
    "BUILTIN_TEMPLATE",
    "add_template",
    "build_builtin_template",
    "list_templates",
    "publish_template",
    "remove_template",
]

BUILTIN_TEMPLATE = "docker-ready"
# What the built-in template's VMs need and get unless told otherwise.
BUILTIN_SIZES = TemplateSizes(
    min_vcpus=1, min_memory=256 * MiB, default_vcpus=1, default_memory=1 * GiB,
    default_disk=DEFAULT_DISK,
)  # fmt: skip


def list_templates(driver: HypervisorDriver) -> list[Template]:
    return driver.list_templates()


def build_builtin_template(
    driver: HypervisorDriver,
    *,
    force: bool = False,
    progress: Progress = no_progress,
    spares: int | None = None,
    engines: EngineAccess | None = None,
) -> tuple[GuestImage, Template]:
    """Build the Docker-ready guest image (unless the cache has it) and make sure the
    hypervisor's `docker-ready` template holds that build; then keep `spares` warm
    spares of it (None: as many as the host kept of it before, remade for a new build;
    see warm.py)."""
    image = build_image(force=force, progress=lambda step, f: progress(f"image: {step}", 0.85 * f))
    kept = 0
    try:
        current = driver.get_template(BUILTIN_TEMPLATE)
        kept = current.spares_kept
        if current.image_key == image.key and not force:
            progress("template up to date", 0.9)
            return image, _warm(driver, current, kept if spares is None else spares,
                                progress, engines)  # fmt: skip
    except NotFound:
        pass
    spec = TemplateSpec(
        name=BUILTIN_TEMPLATE,
        disk=str(image.disk),
        kernel=str(image.kernel),
        initrd=str(image.initrd),
        cmdline=image.cmdline,
        description=(
            f"Docker {_docker_version(image)} on Debian's cloud kernel {image.kernel_version}"
        ),
        docker_port=image.docker_port,
        builtin=True,
        image_key=image.key,
        sizes=BUILTIN_SIZES,
    )
    template = driver.register_template(
        spec, progress=lambda step, f: progress(f"template: {step}", 0.85 + 0.1 * f)
    )
    return image, _warm(driver, template, kept if spares is None else spares, progress, engines)


def _warm(driver: HypervisorDriver, template: Template, spares: int, progress: Progress,
          engines: EngineAccess | None) -> Template:  # fmt: skip
    """`template` with `spares` warm spares kept and made (nothing to do for none)."""
    if spares == 0 and template.spares_kept == 0:
        return template

    def step(what: str, fraction: float) -> None:
        progress(f"spares: {what}", 0.95 + 0.05 * fraction)

    warm.keep_warm_after_change(driver, template.name, spares, engines=engines, progress=step)
    return driver.get_template(template.name)


def _docker_version(image: GuestImage) -> str:
    for package in image.packages:
        if package.startswith("docker.io="):
            return package.split("=", 1)[1].split("+", 1)[0]
    return "engine"


def add_template(
    driver: HypervisorDriver,
    *,
    name: str,
    disk: str,
    kernel: str | None = None,
    initrd: str | None = None,
    cmdline: str | None = None,
    docker_port: int | None = 2376,
    description: str = "",
    progress: Progress = no_progress,
) -> Template:
    """Register a template from a disk image on this machine (qcow2 or raw), booted by its
    own bootloader or by the given kernel and initrd."""
    validate_template_name(name)
    for label, path in (("disk", disk), ("kernel", kernel), ("initrd", initrd)):
        if path is not None and not Path(path).is_file():
            raise InvalidInput(f"{label} {path!r} is not a file")
    if initrd and not kernel:
        raise InvalidInput("an initrd needs a kernel: give --kernel too")
    if docker_port is not None and not 1 <= docker_port <= 65535:
        raise InvalidInput(f"Docker port {docker_port} is not a TCP port")
    spec = TemplateSpec(
        name=name,
        disk=disk,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline or "console=ttyS0 root=/dev/vda1 rw",
        description=description,
        docker_port=docker_port,
    )
    return driver.register_template(spec, progress=progress)


def remove_template(driver: HypervisorDriver, name: str) -> None:
    driver.remove_template(name)


def publish_template(
    driver: HypervisorDriver,
    name: str,
    directory: Path,
    *,
    signing_key: Path,
    version: str | None = None,
    description: str | None = None,
    progress: Progress = no_progress,
) -> CatalogTemplate:
    """Write template `name` of this host into the catalog `directory` (made if absent):
    its files, compressed, and its metadata, signed with the key at `signing_key`
    (made if absent)."""
    template = driver.get_template(name)
    with tempfile.TemporaryDirectory(prefix="dockvisor-publish-") as work:
        spec = driver.export_template(
            name, Path(work), progress=lambda step, f: progress(step, 0.4 * f)
        )
        return publish(
            directory,
            name=name,
            version=version,
            description=description if description is not None else template.description,
            disk=Path(spec.disk),
            kernel=Path(spec.kernel) if spec.kernel else None,
            initrd=Path(spec.initrd) if spec.initrd else None,
            cmdline=spec.cmdline if spec.kernel else None,
            docker_port=spec.docker_port,
            docker_version=_template_docker_version(template),
            features=_features(template),
            sizes=spec.sizes,
            signing_key=signing_key,
            progress=lambda step, f: progress(step, 0.4 + 0.6 * f),
        )


def _template_docker_version(template: Template) -> str | None:
    """The Docker version inside: the built-in image's package, else what its
    description says ("Docker 20.10.24 ...") if it says so."""
    if template.builtin and template.image_key and (image := cached_image(template.image_key)):
        return _docker_version(image)
    match = re.search(r"\bDocker (\d+(?:\.\d+)+)", template.description)
    return match.group(1) if match else None


def _features(template: Template) -> tuple[str, ...]:
    """What the template's guests do that dockvisor relies on."""
    if not template.docker_ready:
        return ()
    found = ["docker-tls", "config-drive"]  # dockerd --tlsverify with the drive's certificates
    if template.builtin:
        found += ["guest-agent", "grows-root-filesystem"]
    return tuple(found)
