"""Cold and warm build times of the Docker-ready guest image (target: cold under 3 min).

Cold: an empty cache, so every Debian package is downloaded, unpacked and the image
sealed by its first boot. Warm: the same build again, answered from the cache.
The cache used is a temporary directory; the user's own cache is not touched.

Usage: .venv/bin/python bench/image_build.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

TARGET_COLD = 180.0


def main() -> int:
    cache = tempfile.mkdtemp(prefix="dockvisor-bench-cache-")
    os.environ["DOCKVISOR_CACHE_DIR"] = cache
    from dockvisor.guest.image import build_image  # reads the cache dir on each call

    steps: list[tuple[str, float]] = []
    start = time.monotonic()

    def progress(step: str, fraction: float) -> None:
        if not steps or steps[-1][0] != step:
            steps.append((step, time.monotonic() - start))

    try:
        image = build_image(progress=progress)
        cold = time.monotonic() - start
        start = time.monotonic()
        build_image()
        warm = time.monotonic() - start
        size = sum(f.stat().st_size for f in image.directory.iterdir())
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    for (step, at), nxt in zip(steps, [*steps[1:], ("", cold)], strict=True):
        print(f"  {at:6.1f}s  {step:<48} {nxt[1] - at:6.1f}s")
    print(f"cold build: {cold:.1f} s (target < {TARGET_COLD:.0f} s) "
          f"{'ok' if cold < TARGET_COLD else 'MISSED'}")  # fmt: skip
    print(f"warm build (cached): {warm:.1f} s")
    print(f"image {image.key}: {size / 2**20:.0f} MiB (kernel, initrd, qcow2 disk)")
    return 0 if cold < TARGET_COLD else 1


if __name__ == "__main__":
    sys.exit(main())
