"""Docker through dockvisor vs. straight to the engine, on one real VM.

Boots a Docker-ready VM on qemu:///system under a scratch dockvisor server (its own data
directory, PKI and SQLite store), starts a container in it, and times, for container
list, inspect and a stop+start pair:

- api:     dockvisor's REST API (GET /api/v1/vms/ID/docker/containers ...), kept-alive
- gateway: the Docker API through dockvisor's engine gateway (what the docker CLI uses),
           kept-alive, with an API token
- direct:  the engine itself over mutual TLS with dockvisor's own client (DockerEngine)

and prints p50/p90 and each one's ratio to direct. Targets: under 1.5 for list and inspect,
under 1.2 for start/stop. It also times whole `docker ps` commands of the stock docker CLI
through the gateway and straight to the engine (TLS), for the record.

Usage: .venv/bin/python bench/docker.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx

from dockvisor.api.docker_routes import ServerGatewayPolicy
from dockvisor.api.engine_gateway import EngineGateway
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.libvirt import LibvirtDriver
from dockvisor.engines.docker import API_VERSION, ContainerSpec
from dockvisor.services import identity
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.runtime import ControlPlane, Settings
from dockvisor.store.models import AclEntryRow

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.api.conftest import serve  # noqa: E402 - the tests' in-process uvicorn

TARGETS = {"list": 1.5, "inspect": 1.5, "stop+start": 1.2}
CONTAINER = "bench"


def timed(fn: Callable[[], object], rounds: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()

    driver = LibvirtDriver("qemu:///system")
    template_service.build_builtin_template(driver)
    driver.close()
    data = Path(tempfile.mkdtemp(prefix="dockvisor-bench-"))
    cp = ControlPlane(
        Settings(data, f"sqlite:///{data / 'db.sqlite'}", default_host=("local", "qemu:///system"))
    )
    cp.start()
    uv, thread, url = serve(cp)
    gateway = EngineGateway(ServerGatewayPolicy(cp), port=0)
    gateway.start()
    cp.engine_gateway_url = f"tcp://127.0.0.1:{gateway.port}"
    name = f"dvt-bench-{secrets.token_hex(3)}"
    try:
        with cp.db.session() as session:
            user = identity.create_user(session, "admin", "bench-password-1")
            session.add(AclEntryRow(subject_kind="user", subject_id=user.id, path="/",
                                    role="Admin", propagate=True))  # fmt: skip
            _, token = identity.create_token(session, user, "bench")
        cp.access.invalidate()
        auth = {"Authorization": f"Bearer {token}"}
        api = httpx.Client(base_url=f"{url}/api/v1", headers=auth, timeout=120, trust_env=False)
        print(f"booting VM {name} (1 vCPU, 1 GiB) ...", flush=True)
        task = api.post("/vms", json={"name": name, "vcpus": 1, "memory": 1024 * MiB}).json()
        while task["state"] in ("pending", "running"):
            task = api.get(f"/tasks/{task['id']}/wait", params={"timeout": 10}).json()
        if task["state"] != "succeeded":
            raise SystemExit(f"creating the VM failed: {task['error']}")
        vm_id = task["object_id"]
        engine = cp.docker.engine_of(vm_id)
        engine.run(ContainerSpec("busybox:latest", name=CONTAINER, command=[
            "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]))  # fmt: skip
        base = f"/vms/{vm_id}/docker/containers"
        gw = httpx.Client(
            base_url=f"http://127.0.0.1:{gateway.port}/vms/{vm_id}/{API_VERSION}",
            headers=auth, timeout=120, trust_env=False,
        )  # fmt: skip
        api.get(base)  # the server starts following the engine's events here

        def gw_ok(response: httpx.Response) -> None:
            if response.status_code >= 300:
                raise SystemExit(f"gateway: {response.status_code} {response.text}")

        def api_ok(response: httpx.Response) -> None:
            if response.status_code >= 300:
                raise SystemExit(f"api: {response.status_code} {response.text}")

        paths: dict[str, dict[str, Callable[[], object]]] = {
            "list": {
                "direct": lambda: engine.containers(all=True),
                "gateway": lambda: gw_ok(gw.get("/containers/json", params={"all": "1"})),
                "api": lambda: api_ok(api.get(base)),
            },
            "inspect": {
                "direct": lambda: engine.inspect(CONTAINER),
                "gateway": lambda: gw_ok(gw.get(f"/containers/{CONTAINER}/json")),
                "api": lambda: api_ok(api.get(f"{base}/{CONTAINER}")),
            },
            "stop+start": {
                "direct": lambda: (engine.stop(CONTAINER), engine.start(CONTAINER)),
                "gateway": lambda: (
                    gw_ok(gw.post(f"/containers/{CONTAINER}/stop")),
                    gw_ok(gw.post(f"/containers/{CONTAINER}/start")),
                ),
                "api": lambda: (
                    api_ok(api.post(f"{base}/{CONTAINER}/stop")),
                    api_ok(api.post(f"{base}/{CONTAINER}/start")),
                ),
            },  # fmt: skip
        }
        print(f"\n{args.rounds} rounds each, p50 / p90 in ms; ratio = p50 / direct p50\n")
        print(f"{'operation':<12}{'path':<9}{'p50':>9}{'p90':>9}{'ratio':>8}  target")
        failed = False
        for op, ways in paths.items():
            rounds = args.rounds if op != "stop+start" else max(5, args.rounds // 4)
            # Interleave the paths round by round, so drift in the guest hits all alike.
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for fn in ways.values():
                timed(fn, 0, warmup=2)
            for _ in range(rounds):
                for way, fn in ways.items():
                    samples[way] += timed(fn, 1, warmup=0)
            direct = statistics.median(samples["direct"])
            for way in ("direct", "gateway", "api"):
                mid, high = statistics.median(samples[way]), p(samples[way], 0.9)
                ratio = mid / direct
                verdict = ""
                if way != "direct":
                    ok = ratio < TARGETS[op]
                    failed |= not ok
                    verdict = f"< {TARGETS[op]}  {'met' if ok else 'MISSED'}"
                print(f"{op:<12}{way:<9}{mid * 1000:>9.1f}{high * 1000:>9.1f}{ratio:>8.2f}  "
                      f"{verdict}")  # fmt: skip
        _docker_cli(cp, vm_id, gateway.port, token, name)
        return 1 if failed else 0
    finally:
        gateway.stop()
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()
        driver = LibvirtDriver("qemu:///system")
        with suppress(Exception):
            vm_service.delete_vm(driver, name, force=True)
        driver.close()
        shutil.rmtree(data, ignore_errors=True)


def _docker_cli(cp: ControlPlane, vm_id: str, port: int, token: str, name: str) -> None:
    docker = shutil.which("docker")
    if docker is None:
        print("\n(no docker CLI on this machine: the whole-command figures are left out)")
        return
    config = Path(tempfile.mkdtemp(prefix="dockvisor-bench-cli-"))
    (config / "config.json").write_text(f'{{"HttpHeaders": {{"Authorization": "Bearer {token}"}}}}')
    endpoint = cp.hosts.driver(1).docker_endpoint(name)
    files = cp.engines.client_files
    through = {**os.environ, "DOCKER_CONFIG": str(config),
               "DOCKER_HOST": f"tcp://127.0.0.1:{port}/vms/{vm_id}"}  # fmt: skip
    direct = {**os.environ, "DOCKER_HOST": endpoint.docker_host, "DOCKER_TLS_VERIFY": "1",
              "DOCKER_CERT_PATH": str(files.directory), "DOCKER_CONFIG": str(config)}  # fmt: skip

    def run(env: dict[str, str]) -> Callable[[], object]:
        return lambda: subprocess.run([docker, "ps", "-a"], env=env, check=True,
                                      capture_output=True)  # fmt: skip

    via, straight = timed(run(through), 10), timed(run(direct), 10)
    print("\nwhole `docker ps -a` commands of the stock docker CLI (process start included):")
    print(f"  through the gateway  p50 {statistics.median(via) * 1000:.0f} ms")
    print(f"  straight, TLS        p50 {statistics.median(straight) * 1000:.0f} ms  "
          f"(ratio {statistics.median(via) / statistics.median(straight):.2f})")  # fmt: skip
    shutil.rmtree(config, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
