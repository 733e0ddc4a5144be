"""Where dockvisor keeps its files on this machine."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["cache_dir", "create_private_file", "data_dir"]


def cache_dir() -> Path:
    """Rebuildable files (the guest image, downloaded packages): DOCKVISOR_CACHE_DIR,
    else $XDG_CACHE_HOME/dockvisor, else ~/.cache/dockvisor."""
    if explicit := os.environ.get("DOCKVISOR_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dockvisor"


def data_dir() -> Path:
    """State that must survive (later: the database): DOCKVISOR_DATA_DIR, else
    $XDG_DATA_HOME/dockvisor, else ~/.local/share/dockvisor."""
    if explicit := os.environ.get("DOCKVISOR_DATA_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dockvisor"


def create_private_file(path: Path, content: str) -> bool:
    """Create `path` with `content`, mode 0600, all at once: it appears complete or not
    at all (written aside, then hard-linked into place). False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(aside, path)
        except FileExistsError:
            return False
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return True
    finally:
        os.unlink(aside)
