"""Catalog pull throughput: dockvisor's download against curl, same file, same server.

Makes a file of random bytes (1 GiB by default) in a scratch directory, signs a catalog
whose template disk it is (the products entry is written directly: publishing would
compress it), serves the directory with the tests' static server (tests/catalog/server.py,
os.sendfile) in a process of its own, then times in turn `curl -s -o OUT URL` and
CatalogClient.download into a fresh directory (from zero each time, checking size and
SHA-256 included) and prints both rates in MiB/s, best and median, and their ratio.
Each timed run starts after os.sync(), so no earlier file is written back meanwhile.
Target: dockvisor at least 0.8 of curl's rate (medians). Needs curl on PATH.

Usage: .venv/bin/python bench/catalog.py [--size-mib N] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from dockvisor.catalogs.client import CatalogClient
from dockvisor.catalogs.publish import load_or_create_signing_key, write_streams
from dockvisor.domain.catalog import CatalogFile, CatalogTemplate
from dockvisor.domain.model import TemplateSizes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.catalog.server import CatalogServer  # noqa: E402 - the tests' static server

TARGET = 0.8
MiB = 1024 * 1024
DISK = "images/bench/1/x86_64/disk.qcow2"
Timing = tuple[float, float]  # seconds elapsed, CPU seconds


def make_catalog(directory: Path, size: int) -> tuple[CatalogFile, str]:
    """A catalog with one template whose disk is `size` random bytes: (its file, key)."""
    path = directory / DISK
    path.parent.mkdir(parents=True)
    sha = hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, 16 * MiB):
            chunk = os.urandom(min(16 * MiB, size - offset))
            sha.update(chunk)
            f.write(chunk)
    file = CatalogFile("disk", DISK, sha.hexdigest(), size)
    template = CatalogTemplate(
        name="bench",
        version="1",
        arch="x86_64",
        description="random bytes",
        files={"disk": file},
        cmdline=None,
        docker_port=None,
        docker_version=None,
        features=(),
        sizes=TemplateSizes(),
        min_disk=size,
        published=datetime.now(UTC),
    )
    private, public = load_or_create_signing_key(directory.parent / "key.pem")
    write_streams(directory, [template], private, datetime.now(UTC))
    return file, public


def serve(directory: Path) -> None:
    """The server process: print the URL, serve until stdin closes."""
    with CatalogServer(directory) as server:
        print(server.url, flush=True)
        sys.stdin.read()


def timed_curl(url: str, out: Path, size: int) -> Timing:
    """Seconds elapsed and CPU seconds of one curl download."""
    cpu = _children_cpu()
    start = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(out), url], check=True)
    elapsed = time.perf_counter() - start
    assert out.stat().st_size == size
    out.unlink()
    return elapsed, _children_cpu() - cpu


def timed_dockvisor(client: CatalogClient, file: CatalogFile, into: Path) -> Timing:
    """Seconds elapsed and CPU seconds (all threads) of one dockvisor download."""
    cpu = time.process_time()
    start = time.perf_counter()
    client.download(file, into)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    shutil.rmtree(into)
    return elapsed, cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if shutil.which("curl") is None:
        print("curl is not installed (Debian package curl)", file=sys.stderr)
        return 2
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="dockvisor-bench-") as scratch:
        root = Path(scratch)
        print(f"making a catalog with a {args.size_mib} MiB random file in {root}")
        file, public = make_catalog(root / "catalog", size)
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(root / "catalog")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            base = server.stdout.readline().strip()
            client = CatalogClient("bench", base, public)
            client.fetch()  # the signed index and products, as a pull starts
            curl: list[Timing] = []
            dockvisor: list[Timing] = []
            for run in range(args.runs):
                # Whoever goes first may pay for what the last run left: alternate.
                steps: list[tuple[list[Timing], Callable[[], Timing]]] = [
                    (curl, partial(timed_curl, base + DISK, root / "curl.out", size)),
                    (dockvisor, partial(timed_dockvisor, client, file, root / "pull")),
                ]
                for times, step in steps if run % 2 == 0 else steps[::-1]:
                    os.sync()  # no writeback of earlier files during the timed run
                    times.append(step())
                print(
                    f"run {run + 1}: curl {curl[-1][0]:.2f} s ({curl[-1][1]:.2f} s CPU), "
                    f"dockvisor {dockvisor[-1][0]:.2f} s ({dockvisor[-1][1]:.2f} s CPU)"
                )
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait()
    mib = size / MiB
    rates = {
        "curl": [mib / t for t, _ in curl],
        "dockvisor": [mib / t for t, _ in dockvisor],
    }
    print(f"\n{'':<10} {'best':>10} {'median':>10}  (MiB/s, {args.runs} runs of {mib:.0f} MiB)")
    for name, values in rates.items():
        print(f"{name:<10} {max(values):>10.0f} {statistics.median(values):>10.0f}")
    ratio = statistics.median(rates["dockvisor"]) / statistics.median(rates["curl"])
    best_ratio = max(rates["dockvisor"]) / max(rates["curl"])
    met = ratio >= TARGET
    print(f"\nratio (medians) {ratio:.2f}, (best) {best_ratio:.2f}; target >= {TARGET}: ", end="")
    print("met" if met else "MISSED")
    print("dockvisor's figure includes checking the size and SHA-256; curl checks nothing.")
    print(
        "dockvisor hashes on a second thread while it receives and writes: it needs two "
        f"free CPUs to keep up (this machine has {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f})."
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
