"""Where dockvisor keeps its files on this machine."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_dir"]


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
