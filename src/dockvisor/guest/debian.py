"""Debian packages as building material: resolve, download and unpack them.

The guest image is made only from the packages of the Debian release the host runs,
fetched with the host's own apt configuration. Only shared-library dependencies are
followed (names starting with ``lib``, and zlib1g), plus the kernel a metapackage
points to: the guest needs the
libraries its binaries link against, not the maintainer scripts' helpers.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dockvisor.errors import ImageBuildError

__all__ = ["DebianPackage", "download", "resolve", "unpack"]


@dataclass(frozen=True, order=True)
class DebianPackage:
    name: str
    version: str
    architecture: str

    @property
    def filename(self) -> str:
        """The file name `apt-get download` gives this package."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class _Record:
    package: DebianPackage
    section: str
    depends: tuple[tuple[str, ...], ...]


def _run(argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} is not installed: {exc}") from exc


def _parse_depends(value: str) -> tuple[tuple[str, ...], ...]:
    groups = []
    for group in value.split(","):
        names = []
        for alternative in group.split("|"):
            name = alternative.strip().split(" ", 1)[0].split(":", 1)[0]
            if name:
                names.append(name)
        if names:
            groups.append(tuple(names))
    return tuple(groups)


def _show(names: Iterable[str]) -> dict[str, _Record]:
    """Candidate records of real packages among `names` (virtual ones are absent)."""
    names = sorted(set(names))
    if not names:
        return {}
    proc = _run(["apt-cache", "show", "--no-all-versions", *names])
    records: dict[str, _Record] = {}
    for stanza in proc.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" not in fields:
            continue
        depends = ", ".join(v for k in ("Pre-Depends", "Depends") if (v := fields.get(k)))
        records[fields["Package"]] = _Record(
            DebianPackage(fields["Package"], fields["Version"], fields["Architecture"]),
            fields.get("Section", ""),
            _parse_depends(depends),
        )
    return records


def _providers(name: str) -> list[str]:
    proc = _run(["apt-cache", "showpkg", name])
    lines = proc.stdout.splitlines()
    if "Reverse Provides: " not in lines:
        return []
    idx = lines.index("Reverse Provides: ")
    return [line.split()[0] for line in lines[idx + 1 :] if line.strip()]


def resolve(roots: Sequence[str]) -> list[DebianPackage]:
    """The candidate versions of `roots` and of the libraries they need, transitively.

    Raises ImageBuildError naming the package apt does not know (apt lists missing or
    stale: run `apt-get update`).
    """
    found: dict[str, _Record] = {}
    wanted = set(roots)
    frontier = set(roots)
    while frontier:
        records = _show(frontier)
        for name in frontier - records.keys():
            providers = [p for p in _providers(name) if p not in found]
            if name in wanted and not providers:
                raise ImageBuildError(
                    f"Debian package {name!r} is not known to apt (run: apt-get update)"
                )
            records.update(_show(providers[:1]))
        found.update(records)
        frontier = set()
        for record in records.values():
            for group in record.depends:
                if any(alt in found for alt in group):
                    continue
                first = group[0]
                if first.startswith(("lib", "linux-image-")) or first in _LIBRARY_PACKAGES:
                    frontier.add(first)
        frontier -= found.keys()
    return sorted(r.package for r in found.values())


# Library packages whose names do not start with "lib". (A kernel metapackage's
# dependency, linux-image-VERSION-FLAVOUR, is followed too.)
_LIBRARY_PACKAGES = frozenset({"zlib1g"})


def download(packages: Iterable[DebianPackage], dest: Path) -> list[Path]:
    """The .deb files of `packages` in `dest`, downloading those not already there."""
    dest.mkdir(parents=True, exist_ok=True)
    packages = list(packages)
    missing = [p for p in packages if not (dest / p.filename).exists()]
    if missing:
        proc = _run(["apt-get", "download", *(f"{p.name}={p.version}" for p in missing)], cwd=dest)
        if proc.returncode != 0:
            raise ImageBuildError(f"apt-get download failed: {proc.stderr.strip()}")
    absent = [p.filename for p in packages if not (dest / p.filename).exists()]
    if absent:
        raise ImageBuildError(f"apt-get download did not produce {', '.join(absent)}")
    return [dest / p.filename for p in packages]


def unpack(deb: Path, root: Path) -> None:
    """Unpack a package's files into `root`, keeping root's merged-/usr symlinks."""
    data = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    tar = _run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)], stdin=data.stdout)
    assert data.stdout is not None
    data.stdout.close()
    if data.wait() != 0 or tar.returncode != 0:
        raise ImageBuildError(f"cannot unpack {deb.name}: {tar.stderr.strip()}")
