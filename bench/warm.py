"""Create-to-engine time of Docker-ready VMs on qemu:///system: cold boots against warm
starts (a spare resumed), in one run on the same template, host and sizes.

Both sides are the same call, `vms.create_vm_from_template` (what `vm create` runs),
timed from the call until it returns, which is when the new VM's Docker engine has
answered over mutual TLS with the VM's own certificate; only `cold` differs. Each VM is
deleted before the next create. The spares are made first (their making is the host's
work ahead of time, timed and printed apart: it is what a warm start saves the user).

Prints cold create-to-engine (median and max over --cold-rounds), warm (p50 and max over
--rounds, 10 by default), and the ratio of the medians. Target: warm p50 under 5 s.

Usage: .venv/bin/python bench/warm.py [--rounds N] [--cold-rounds N]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from contextlib import suppress

from dockvisor.domain.sizes import MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.errors import DockvisorError
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services import warm as warm_service
from dockvisor.services.engines import EngineAccess

TARGET = 5.0
TEMPLATE = "docker-ready"


def create(driver: LibvirtDriver, engines: EngineAccess, name: str, *, cold: bool) -> float:
    how: list[str] = []

    def note(step: str, _fraction: float) -> None:
        if step.startswith((vm_service.WARM_START, vm_service.COLD_START)):
            how.append(step)

    start = time.perf_counter()
    vm_service.create_vm_from_template(driver, name=name, template=TEMPLATE, vcpus=1,
                                       memory=1024 * MiB, engines=engines, cold=cold,
                                       progress=note)  # fmt: skip
    took = time.perf_counter() - start
    warm = vm_service.WARM_START in how
    if warm == cold:
        raise SystemExit(f"{name}: expected a {'cold' if cold else 'warm'} start, got {how}")
    return took


def remove(driver: LibvirtDriver, name: str) -> None:
    with suppress(DockvisorError):
        driver.force_off(name)
    with suppress(DockvisorError):
        driver.delete_vm(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cold-rounds", type=int, default=3)
    args = parser.parse_args()
    driver = LibvirtDriver("qemu:///system")
    engines = EngineAccess.default()
    template_service.build_builtin_template(driver)
    prefix = f"dvb-{secrets.token_hex(2)}-"
    before = warm_service.spares_of(driver, TEMPLATE)
    if before:
        print(f"note: {len(before)} spare(s) of {TEMPLATE} exist and are used first")
    cold: list[float] = []
    warm: list[float] = []
    try:
        for i in range(args.cold_rounds):
            name = f"{prefix}cold{i}"
            cold.append(create(driver, engines, name, cold=True))
            remove(driver, name)
            print(f"cold {i + 1}: {cold[-1]:.2f} s", flush=True)
        started = time.perf_counter()
        warm_service.warm_template(driver, TEMPLATE, args.rounds, engines=engines)
        making = time.perf_counter() - started
        print(f"made {args.rounds} spares ahead in {making:.0f} s "
              f"({making / args.rounds:.1f} s each, the host's time)", flush=True)  # fmt: skip
        for i in range(args.rounds):
            name = f"{prefix}warm{i}"
            warm.append(create(driver, engines, name, cold=False))
            remove(driver, name)
            print(f"warm {i + 1}: {warm[-1]:.2f} s", flush=True)
    finally:
        warm_service.warm_template(driver, TEMPLATE, 0, engines=engines)
        driver.close()
    cold_p50, warm_p50 = statistics.median(cold), statistics.median(warm)
    print()
    print(f"cold create-to-engine: p50 {cold_p50:.2f} s, max {max(cold):.2f} s "
          f"(n={len(cold)})")  # fmt: skip
    print(f"warm create-to-engine: p50 {warm_p50:.2f} s, max {max(warm):.2f} s "
          f"(n={len(warm)})")  # fmt: skip
    print(f"ratio cold/warm (p50): {cold_p50 / warm_p50:.1f}x")
    met = warm_p50 < TARGET
    print(f"target warm p50 < {TARGET:.0f} s: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
