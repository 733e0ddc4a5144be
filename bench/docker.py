"""Docker through dockvisor vs. straight to the engine, on one real VM.

Boots a Docker-ready VM on qemu:///system under a scratch dockvisor server (its own data
directory, PKI and SQLite store), starts a container in it, and times, for container
list, inspect and a stop+start pair:

- direct:   the engine itself over mutual TLS with dockvisor's own client (DockerEngine)
- gateway:  the Docker API through dockvisor's engine gateway (what the docker CLI uses),
            kept-alive, with an API token
- api:      dockvisor's REST API (GET /api/v1/vms/ID/docker/containers ...), kept-alive
- services: (list only) dockvisor's own live list, from its service layer: the privilege
            check and the engine client's GET /containers/json that services/docker.py
            makes when its watch is not following the engine, without the HTTP hop

Each figure says where its answer comes from. The REST API's container list answers from
the watch (the engine's event stream, re-listed on every container event): no engine
call, so it is labelled "cached (watch)" and set against nothing; the API has no way to
ask for a live list, so dockvisor's live list is measured in the service layer. Every
other figure makes the engine call ("live engine call") and its ratio is to direct p50:
live against live only. Targets: under 1.5 for list and inspect, under 1.2 for
stop+start. It also times whole `docker ps` commands of the stock docker CLI through the
gateway and straight to the engine (TLS), both live, for the record.

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
from dockvisor.domain.privileges import Privilege
from dockvisor.domain.sizes import MiB
from dockvisor.drivers.registry import open_driver
from dockvisor.engines.docker import API_VERSION, ContainerSpec
from dockvisor.services import identity
from dockvisor.services import templates as template_service
from dockvisor.services import vms as vm_service
from dockvisor.services.docker import container_summary
from dockvisor.services.runtime import ControlPlane, Settings
from dockvisor.store.models import AclEntryRow, UserRow

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.api.conftest import serve  # noqa: E402 - the tests' in-process uvicorn

TARGETS = {"list": 1.5, "inspect": 1.5, "stop+start": 1.2}
CONTAINER = "bench"
LIVE, CACHED = "live engine call", "cached (watch)"


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

    driver = open_driver("qemu:///system")
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
        with cp.db.read() as session:
            row = session.get(UserRow, user.id)
            assert row is not None
            admin = identity.principal_for(session, row, "token")
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
        time.sleep(2)  # ...and has listed once: from now on the API's list is the watch's

        def gw_ok(response: httpx.Response) -> None:
            if response.status_code >= 300:
                raise SystemExit(f"gateway: {response.status_code} {response.text}")

        def api_ok(response: httpx.Response) -> None:
            if response.status_code >= 300:
                raise SystemExit(f"api: {response.status_code} {response.text}")

        def services_live_list() -> object:
            """What services/docker.py does for a list when its watch is not following
            the engine (plus one primary-key read of the VM, in engine_of)."""
            cp.docker.check(admin, vm_id, Privilege.DOCKER_VIEW)
            return [container_summary(c) for c in cp.docker.engine_of(vm_id).containers(all=True)]

        def direct_cycle() -> None:
            engine.stop(CONTAINER)
            engine.start(CONTAINER)

        def gateway_cycle() -> None:
            gw_ok(gw.post(f"/containers/{CONTAINER}/stop"))
            gw_ok(gw.post(f"/containers/{CONTAINER}/start"))

        def api_cycle() -> None:
            api_ok(api.post(f"{base}/{CONTAINER}/stop"))
            api_ok(api.post(f"{base}/{CONTAINER}/start"))

        # operation -> path -> (where its answer comes from, the call)
        paths: dict[str, dict[str, tuple[str, Callable[[], object]]]] = {
            "list": {
                "direct": (LIVE, lambda: engine.containers(all=True)),
                "gateway": (LIVE, lambda: gw_ok(gw.get("/containers/json", params={"all": "1"}))),
                "services": (LIVE, services_live_list),
                "api": (CACHED, lambda: api_ok(api.get(base))),
            },
            "inspect": {
                "direct": (LIVE, lambda: engine.inspect(CONTAINER)),
                "gateway": (LIVE, lambda: gw_ok(gw.get(f"/containers/{CONTAINER}/json"))),
                "api": (LIVE, lambda: api_ok(api.get(f"{base}/{CONTAINER}"))),
            },
            "stop+start": {
                "direct": (LIVE, direct_cycle),
                "gateway": (LIVE, gateway_cycle),
                "api": (LIVE, api_cycle),
            },
        }  # fmt: skip
        print(f"\n{args.rounds} rounds each, p50 / p90 in ms; ratio = p50 / direct p50, "
              "live engine calls only\n")  # fmt: skip
        print(f"{'operation':<12}{'path':<10}{'answer from':<18}{'p50':>8}{'p90':>8}{'ratio':>7}"
              "  target")  # fmt: skip
        failed = False
        for op, ways in paths.items():
            rounds = args.rounds if op != "stop+start" else max(5, args.rounds // 4)
            # Interleave the paths round by round, so drift in the guest hits all alike.
            samples: dict[str, list[float]] = {way: [] for way in ways}
            for _, fn in ways.values():
                timed(fn, 0, warmup=2)
            for _ in range(rounds):
                for way, (_, fn) in ways.items():
                    samples[way] += timed(fn, 1, warmup=0)
            direct = statistics.median(samples["direct"])
            for way, (source, _) in ways.items():
                mid, high = statistics.median(samples[way]), p(samples[way], 0.9)
                if source == CACHED:
                    # No engine call behind it: a ratio to a live call would flatter it.
                    ratio, verdict = "-", "none: no engine call, not set against direct"
                elif way == "direct":
                    ratio, verdict = f"{mid / direct:.2f}", ""
                else:
                    ok = mid / direct < TARGETS[op]
                    failed |= not ok
                    ratio = f"{mid / direct:.2f}"
                    verdict = f"< {TARGETS[op]}  {'met' if ok else 'MISSED'}"
                print(f"{op:<12}{way:<10}{source:<18}{mid * 1000:>8.1f}{high * 1000:>8.1f}"
                      f"{ratio:>7}  {verdict}")  # fmt: skip
        print("\nThe API's list answers from the watch; a live list through the API cannot be")
        print("asked for, so dockvisor's live list is the services row (no HTTP hop: the api")
        print("row of inspect shows what the HTTP hop adds to a live call).")
        _docker_cli(cp, vm_id, gateway.port, token, name)
        return 1 if failed else 0
    finally:
        gateway.stop()
        uv.should_exit = True
        thread.join(timeout=10)
        cp.stop()
        driver = open_driver("qemu:///system")
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(config)
    through = [docker, "-H", f"tcp://127.0.0.1:{port}/vms/{vm_id}", "ps", "-a"]
    # Straight to the engine's host port: the CLI checks the name of the address it
    # dials (127.0.0.1), which an engine's certificate does not name (it names only its
    # VM), so the straight run presents the client certificate over TLS without checking
    # the server's name (--tls, not --tlsverify): the same handshake, minus that check.
    straight = [docker, "-H", f"tcp://127.0.0.1:{endpoint.port}", "--tls",
                "--tlscacert", str(files.ca), "--tlscert", str(files.cert),
                "--tlskey", str(files.key), "ps", "-a"]  # fmt: skip

    def run(argv: list[str]) -> Callable[[], object]:
        def once() -> None:
            done = subprocess.run(argv, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)}: {done.stderr.strip()}")

        return once

    try:
        via, direct = timed(run(through), 10), timed(run(straight), 10)
    finally:
        shutil.rmtree(config, ignore_errors=True)
    print("\nwhole `docker ps -a` commands of the stock docker CLI (process start included;")
    print("both make the live engine call):")
    print(f"  through the gateway          p50 {statistics.median(via) * 1000:.0f} ms")
    print(f"  straight to the engine, TLS  p50 {statistics.median(direct) * 1000:.0f} ms  "
          f"(ratio {statistics.median(via) / statistics.median(direct):.2f})")  # fmt: skip
    print("  (straight: --tls with dockvisor's client certificate, the server's name unchecked,")
    print("  as the CLI cannot check it on a host port)")


if __name__ == "__main__":
    sys.exit(main())
