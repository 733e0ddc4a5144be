"""The stock docker CLI, found the way setup installs it (scripts/setup-host.sh, step 5):
the one on PATH, else the client binary setup put in .venv/bin."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def docker_cli() -> str:
    """The docker CLI's path; AssertionError, saying what to run, if there is none."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join([os.environ.get("PATH", ""), venv_bin])
    found = shutil.which("docker", path=path)
    if found is None:
        raise AssertionError(
            f"no docker CLI on PATH or in {venv_bin}: `make setup` installs one there"
        )
    return found
