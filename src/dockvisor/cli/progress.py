"""A progress bar for long operations: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Call it as a `progress(step, fraction)` callback; `close()` when done."""

    def __init__(self, title: str, *, stream: TextIO | None = None, enabled: bool | None = None):
        self.title = title
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._drawn = False
        self._fraction = 0.0

    def __call__(self, step: str, fraction: float) -> None:
        if not self.enabled:
            return
        self._fraction = max(self._fraction, min(1.0, max(0.0, fraction)))
        width = shutil.get_terminal_size((80, 20)).columns
        bar_width = 24
        filled = int(bar_width * self._fraction)
        elapsed = time.monotonic() - self._start
        text = (
            f"{self.title} [{'#' * filled}{'.' * (bar_width - filled)}] "
            f"{self._fraction:4.0%} {elapsed:5.1f}s {step}"
        )
        self.stream.write("\r" + text[: width - 1].ljust(width - 1))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((80, 20)).columns - 1) + "\r")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
