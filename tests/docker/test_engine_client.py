"""The Docker engine client against a real dockerd in a real VM (and, for the TLS name
checks, against a small local TLS server with a throwaway CA).

The package's one VM serves it (conftest.py: the `engine` fixture); every container a
test makes carries the label TEST_LABEL and is removed after it, and every image a test
makes is removed by it.
busybox:latest is preloaded in the guest; nothing is ever pulled.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import secrets
import socket
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dockvisor import errors
from dockvisor.domain.model import DockerEndpoint
from dockvisor.domain.sizes import MiB
from dockvisor.engines.docker import (
    ContainerSpec,
    DockerEngine,
    EngineCertificateError,
    EngineError,
    EngineUnavailable,
    PortBinding,
    demultiplex,
)
from dockvisor.errors import AlreadyExists, BadPowerState, InvalidInput, NotFound
from tests.docker.conftest import TEST_LABEL

pytestmark = pytest.mark.vm

BUSYBOX = "busybox:latest"


def spec(command: list[str] | None = None, **changes: Any) -> ContainerSpec:
    """A busybox container labelled for cleanup."""
    labels = {TEST_LABEL: "1", **changes.pop("labels", {})}
    image = changes.pop("image", BUSYBOX)
    return ContainerSpec(image=image, command=command, labels=labels, **changes)


def unique() -> str:
    return f"dvt-eng-{secrets.token_hex(3)}"


def all_ids(engine: DockerEngine) -> set[str]:
    return {c["Id"] for c in engine.containers(all=True)}


def status(engine: DockerEngine, container: str) -> str:
    return str(engine.inspect(container)["State"]["Status"])


def image_tags(engine: DockerEngine) -> set[str]:
    return {tag for image in engine.images() for tag in image["RepoTags"] or []}


# -- creating and running ------------------------------------------------------------


def test_run_with_env_ports_limits_and_volumes_shows_them_in_inspect(
    engine: DockerEngine,
) -> None:
    name = unique()
    cid = engine.run(
        spec(
            ["sleep", "600"],
            name=name,
            env={"GREETING": "hello world"},
            ports=[(18080, 80), PortBinding(18081, 81, "udp", "127.0.0.1")],
            volumes=["/data", "/tmp:/hosttmp:ro"],
            restart_policy="on-failure:3",
            cpus=0.5,
            memory=64 * MiB,
            labels={"purpose": "inspect"},
        )
    )
    info = engine.inspect(cid)
    assert info["Name"] == f"/{name}" and info["State"]["Running"] is True
    host = info["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * MiB
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["PortBindings"] == {
        "80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "18080"}],
        "81/udp": [{"HostIp": "127.0.0.1", "HostPort": "18081"}],
    }
    assert "GREETING=hello world" in info["Config"]["Env"]
    assert info["Config"]["Labels"]["purpose"] == "inspect"
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/hosttmp"]["RW"] is False and mounts["/hosttmp"]["Source"] == "/tmp"
    assert mounts["/data"]["Type"] == "volume"
    # and the container lives under them
    limit = "cat /sys/fs/cgroup/memory.max || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    result = engine.exec_run(cid, ["sh", "-c", f"echo $GREETING; {limit} 2>/dev/null"])
    assert result.stdout.split() == [b"hello", b"world", str(64 * MiB).encode()]


def test_a_taken_name_is_already_exists_and_nothing_new_is_made(engine: DockerEngine) -> None:
    name = unique()
    engine.run(spec(["sleep", "600"], name=name))
    before = all_ids(engine)
    with pytest.raises(AlreadyExists, match=f'The container name "/{name}" is already in use'):
        engine.run(spec(["true"], name=name))
    assert all_ids(engine) == before


def test_a_missing_image_is_not_found_and_nothing_is_made(engine: DockerEngine) -> None:
    before = all_ids(engine)
    with pytest.raises(NotFound, match="No such image: dvt-eng-missing:latest"):
        engine.run(spec(["true"], image="dvt-eng-missing:latest", name=unique()))
    assert all_ids(engine) == before


def test_a_container_that_cannot_start_is_removed(engine: DockerEngine) -> None:
    engine.run(spec(["sleep", "600"], ports=[(18090, 80)]))
    before, second = all_ids(engine), unique()
    with pytest.raises(EngineError, match="port is already allocated"):
        engine.run(spec(["sleep", "600"], name=second, ports=[(18090, 80)]))
    assert all_ids(engine) == before
    with pytest.raises(NotFound, match=f"No such container: {second}"):
        engine.inspect(second)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ports": [(0, 80)]}, "invalid host port 0: ports are 1 to 65535"),
        ({"ports": [(8080, 65536)]}, "invalid container port 65536"),
        ({"ports": [(8080, 80, "sctp")]}, "invalid protocol 'sctp': use tcp or udp"),
        ({"ports": [(8080,)]}, "give \\(host_port, container_port"),
        ({"cpus": 0}, "cpus must be more than 0, not 0"),
        ({"cpus": -1.5}, "cpus must be more than 0"),
        ({"memory": 4 * MiB}, "a memory limit must be at least 6 MiB"),
        ({"restart_policy": "sometimes"}, "invalid restart policy 'sometimes'"),
        ({"restart_policy": "on-failure:x"}, "invalid restart policy"),
        ({"name": "-web"}, "invalid container name '-web'"),
        ({"name": "a"}, "invalid container name 'a'"),
        ({"name": "web server"}, "invalid container name"),
        ({"volumes": ["/src:relative"]}, "the target must be an absolute path"),
        ({"volumes": ["/src:/dst:rx"]}, "the mode is ro or rw"),
        ({"volumes": ["bad name:/dst"]}, "the source is an absolute path or a volume name"),
        ({"command": "sleep 10"}, "give the command as a list"),
        ({"env": {"A=B": "c"}}, "invalid environment variable name 'A=B'"),
        ({"image": ""}, "a container needs an image"),
    ],
)
def test_unusable_specs_are_refused_before_any_request(
    changes: dict[str, Any], message: str, unreachable: DockerEngine
) -> None:
    # The engine does not answer: any request would be EngineUnavailable, not InvalidInput.
    unusable = spec(**{"command": ["true"], **changes})
    with pytest.raises(InvalidInput, match=message):
        unreachable.run(unusable)
    with pytest.raises(InvalidInput, match=message):
        unreachable.create_container(unusable)


def test_the_older_run_and_create_signatures_still_work(engine: DockerEngine) -> None:
    cid = engine.create(BUSYBOX, ["true"], name=unique())
    engine.remove(cid)
    output = engine.run_to_completion(BUSYBOX, ["echo", "done"])
    assert output == "done\n"


# -- power states --------------------------------------------------------------------


def test_start_stop_restart_pause_unpause_kill_remove(engine: DockerEngine) -> None:
    cid = engine.create_container(spec(["sleep", "600"]))
    assert status(engine, cid) == "created"
    engine.start(cid)
    assert status(engine, cid) == "running"
    engine.start(cid)  # already running: nothing to do
    with pytest.raises(BadPowerState, match="cannot remove a running container"):
        engine.remove(cid)
    with pytest.raises(BadPowerState, match="is not paused"):
        engine.unpause(cid)

    engine.pause(cid)
    assert status(engine, cid) == "paused"
    with pytest.raises(BadPowerState, match="is already paused"):
        engine.pause(cid)
    with pytest.raises(BadPowerState, match="is paused, unpause the container before exec"):
        engine.exec_run(cid, ["true"])
    engine.unpause(cid)
    assert status(engine, cid) == "running"

    engine.stop(cid, timeout=1)  # sleep ignores SIGTERM as PID 1: killed after 1 s
    assert status(engine, cid) == "exited"
    engine.stop(cid)  # already stopped: nothing to do
    with pytest.raises(BadPowerState, match="is not running"):
        engine.kill(cid)
    with pytest.raises(BadPowerState, match="is not running"):
        engine.pause(cid)

    first_start = engine.inspect(cid)["State"]["StartedAt"]
    engine.restart(cid, timeout=1)
    state = engine.inspect(cid)["State"]
    assert state["Status"] == "running" and state["StartedAt"] != first_start

    engine.kill(cid, "SIGTERM")  # PID 1 without a handler: SIGTERM does nothing
    time.sleep(0.5)
    assert status(engine, cid) == "running"
    engine.kill(cid)
    assert engine.wait(cid) == 137
    assert status(engine, cid) == "exited"

    engine.remove(cid, volumes=True)
    with pytest.raises(NotFound, match="No such container"):
        engine.inspect(cid)
    with pytest.raises(NotFound, match="No such container"):
        engine.start(cid)


def test_remove_with_force_takes_a_running_container(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sleep", "600"]))
    engine.remove(cid, force=True)
    assert cid not in all_ids(engine)


def test_list_and_filter_containers(engine: DockerEngine) -> None:
    running = engine.run(spec(["sleep", "600"], labels={"role": "running"}))
    created = engine.create_container(spec(["true"], labels={"role": "created"}))
    mine = {c["Id"] for c in engine.containers(filters={"label": [TEST_LABEL]})}
    assert mine == {running, created}
    assert [c["Id"] for c in engine.containers(all=False, filters={"label": [TEST_LABEL]})] == [
        running
    ]
    found = engine.containers(filters={"label": ["role=created"]})
    assert [c["Id"] for c in found] == [created]


# -- logs ----------------------------------------------------------------------------


def test_logs_in_order_by_stream_with_tail_and_timestamps(engine: DockerEngine) -> None:
    # Pauses between the lines: stdout and stderr are two pipes, and the engine orders what
    # arrives on them at the same instant as it happens to read it.
    cid = engine.run(spec(["sh", "-c", "echo one; sleep 0.2; echo two >&2; sleep 0.2; echo three"]))
    assert engine.wait(cid) == 0
    assert engine.logs(cid) == "one\ntwo\nthree\n"
    assert engine.logs(cid, stderr=False) == "one\nthree\n"
    assert engine.logs(cid, stdout=False) == "two\n"
    assert engine.logs(cid, tail=1) == "three\n"
    assert engine.logs(cid, tail=0) == ""
    stamped = engine.logs(cid, timestamps=True).splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["one", "two", "three"]
    assert dt.datetime.fromisoformat(stamped[0].split(" ")[0]).tzinfo is not None
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert engine.logs(cid, since=future) == ""
    with pytest.raises(NotFound, match="No such container"):
        engine.logs("dvt-eng-nope")


def test_logs_of_a_tty_container_are_not_multiplexed(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sh", "-c", "echo out; echo err >&2"], tty=True))
    assert engine.wait(cid) == 0
    assert engine.logs(cid) == "out\r\nerr\r\n"  # one terminal: one stream, CR LF
    with engine.follow_logs(cid) as stream:
        assert b"".join(data for _, data in stream) == b"out\r\nerr\r\n"


def test_follow_logs_streams_lines_as_they_are_written(engine: DockerEngine) -> None:
    script = "for i in $(seq 1 10); do echo line $i; echo warn $i >&2; sleep 0.2; done"
    cid = engine.run(spec(["sh", "-c", script]))
    received: list[tuple[str, bytes]] = []
    with engine.follow_logs(cid) as stream:
        for stream_name, data in stream:
            if not received:  # the first chunk arrives while the container still runs
                assert engine.inspect(cid)["State"]["Running"] is True
            received.append((stream_name, data))
    assert status(engine, cid) == "exited"  # the stream ended with the container
    out = b"".join(d for s, d in received if s == "stdout").decode()
    err = b"".join(d for s, d in received if s == "stderr").decode()
    assert out.splitlines() == [f"line {i}" for i in range(1, 11)]
    assert err.splitlines() == [f"warn {i}" for i in range(1, 11)]


def test_closing_a_log_stream_early_releases_it(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sh", "-c", "while true; do echo tick; sleep 0.2; done"]))
    stream = engine.follow_logs(cid, tail=0)
    first = next(stream)
    assert first == ("stdout", b"tick\n")
    stream.close()
    assert list(stream) == []
    assert engine.ping()  # the client is still fine for other requests
    # a generator-style consumer that stops early also releases the stream
    for _, _data in engine.follow_logs(cid):
        break
    assert engine.inspect(cid)["State"]["Running"] is True


# -- exec ----------------------------------------------------------------------------


def test_exec_run_returns_output_and_exit_code(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sleep", "600"]))
    result = engine.exec_run(cid, ["sh", "-c", "echo out; echo err >&2; exit 4"])
    assert result == (4, b"out\n", b"err\n")
    command = ["sh", "-c", "echo $WHO in $(pwd) as $(id -u)"]
    exit_code, stdout, _ = engine.exec_run(
        cid, command, env={"WHO": "me"}, workdir="/tmp", user="1234:1234"
    )
    assert (exit_code, stdout) == (0, b"me in /tmp as 1234\n")
    big = engine.exec_run(cid, ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"])
    assert big.stdout == b"x" * 300_000  # several frames
    missing = engine.exec_run(cid, ["no-such-command"])  # the engine's own exit code
    assert missing.exit_code == 126 and b"executable file not found" in missing.stdout


def test_interactive_exec_over_a_hijacked_socket(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sleep", "600"]))
    with engine.exec_socket(cid, ["sh"]) as session:
        session.sock.settimeout(60)
        engine.exec_resize(session.exec_id, 40, 120)
        session.sendall(b"stty size; echo hi; exit 3\n")
        output = session.read_all()
    assert b"40 120\r\n" in output and b"hi\r\n" in output
    assert engine.exec_inspect(session.exec_id)["ExitCode"] == 3


def test_interactive_exec_without_a_tty_is_multiplexed(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sleep", "600"]))
    script = "read line; echo got $line; echo oops >&2; exit 5"
    with engine.exec_socket(cid, ["sh", "-c", script], tty=False) as session:
        session.sock.settimeout(60)
        session.sendall(b"hello\n")
        stdout, stderr = demultiplex(session.read_all())
    assert (stdout, stderr) == (b"got hello\n", b"oops\n")
    assert engine.exec_inspect(session.exec_id)["ExitCode"] == 5


def test_closing_an_execs_input_over_tls_ends_its_stdin_and_keeps_its_output(
    engine: DockerEngine,
) -> None:
    # `echo 'echo hi' | docker exec -i CONTAINER sh`: the shell must see the end of its input
    assert engine.endpoint.tls  # dockvisor's engines speak only mutual TLS
    cid = engine.run(spec(["sleep", "600"]))
    with engine.exec_socket(cid, ["sh"], tty=False) as session:
        session.sock.settimeout(60)
        session.sendall(b"echo hi; echo there\n")
        session.close_write()
        stdout, stderr = demultiplex(session.read_all())
    assert (stdout, stderr) == (b"hi\nthere\n", b"")
    assert engine.exec_inspect(session.exec_id)["ExitCode"] == 0


def test_a_large_input_comes_back_whole_through_cat_after_close_write(
    engine: DockerEngine,
) -> None:
    cid = engine.run(spec(["sleep", "600"]))
    data = bytes(range(256)) * 800  # 200 KB
    with engine.exec_socket(cid, ["cat"], tty=False) as session:
        session.sock.settimeout(60)

        def feed() -> None:  # stdin from another thread while this one reads the output
            for start in range(0, len(data), 10_000):
                session.sendall(data[start : start + 10_000])
            session.close_write()

        writer = threading.Thread(target=feed)
        writer.start()
        stdout, stderr = demultiplex(session.read_all())
        writer.join()
    assert len(stdout) == len(data) and stdout == data and stderr == b""
    assert engine.exec_inspect(session.exec_id)["ExitCode"] == 0


def test_exec_in_a_missing_or_stopped_container(engine: DockerEngine) -> None:
    with pytest.raises(NotFound, match="No such container: dvt-eng-nope"):
        engine.exec_socket("dvt-eng-nope", ["sh"])
    cid = engine.create_container(spec(["sleep", "600"]))
    with pytest.raises(BadPowerState, match="is not running"):
        engine.exec_run(cid, ["true"])


# -- stats ---------------------------------------------------------------------------


def test_stats_reports_memory_and_cpu(engine: DockerEngine) -> None:
    cid = engine.run(spec(["sleep", "600"], memory=32 * MiB))
    stats = engine.stats(cid)
    assert stats["memory_stats"]["usage"] > 0
    assert stats["memory_stats"]["limit"] == 32 * MiB
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["cpu_stats"]["online_cpus"] >= 1
    with engine.stream_stats(cid) as samples:
        first, second = next(samples), next(samples)
    assert second["read"] > first["read"]


# -- images --------------------------------------------------------------------------


def test_images_list_and_inspect(engine: DockerEngine) -> None:
    assert BUSYBOX in image_tags(engine)
    image = engine.inspect_image(BUSYBOX)
    assert image["Id"].startswith("sha256:") and BUSYBOX in image["RepoTags"]
    with pytest.raises(NotFound, match="No such image: dvt-eng-nope:latest"):
        engine.inspect_image("dvt-eng-nope:latest")
    with pytest.raises(NotFound, match="No such image"):
        engine.remove_image("dvt-eng-nope:latest")


def test_a_saved_image_loads_back(engine: DockerEngine, tmp_path: Path) -> None:
    copy = f"dvt-eng-copy-{secrets.token_hex(2)}:v1"
    engine.tag_image(BUSYBOX, *copy.split(":"))
    try:
        tarball = tmp_path / "copy.tar"
        with engine.save_image(copy) as chunks, tarball.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
        with tarfile.open(tarball) as tar:
            assert "manifest.json" in tar.getnames()
        engine.remove_image(copy)
        assert copy not in image_tags(engine)

        with tarball.open("rb") as source:
            loaded = engine.load_image(source)  # a file, streamed up
        assert loaded == [copy]
        assert engine.inspect_image(copy)["Id"] == engine.inspect_image(BUSYBOX)["Id"]
        engine.remove_image(copy)
        data = tarball.read_bytes()
        pieces = (data[i : i + 100_000] for i in range(0, len(data), 100_000))
        assert engine.load_image(pieces) == [copy]  # an iterator of bytes
    finally:
        if copy in image_tags(engine):
            engine.remove_image(copy)
    assert BUSYBOX in image_tags(engine)


def test_loading_something_else_is_refused_with_the_engines_reason(
    engine: DockerEngine,
) -> None:
    before = image_tags(engine)
    with pytest.raises(EngineError, match="Error processing tar file"):
        engine.load_image(b"this is not a tarball" * 100)
    assert image_tags(engine) == before


def test_import_a_root_filesystem(engine: DockerEngine) -> None:
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        content = b"made by dockvisor's tests\n"
        member = tarfile.TarInfo("etc/motd")
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content))
    rootfs.seek(0)
    repository = f"dvt-eng-rootfs-{secrets.token_hex(2)}"
    image_id = engine.import_image(rootfs, repository, "v1")
    try:
        image = engine.inspect_image(f"{repository}:v1")
        assert image["Id"] == image_id and image["RepoTags"] == [f"{repository}:v1"]
        assert image["Size"] == len(content)
    finally:
        engine.remove_image(f"{repository}:v1")
    with pytest.raises(NotFound):
        engine.inspect_image(f"{repository}:v1")


# -- events --------------------------------------------------------------------------


def test_events_report_a_container_start(engine: DockerEngine) -> None:
    key, value = f"{TEST_LABEL}.events", secrets.token_hex(3)
    engine_now = dt.datetime.fromisoformat(engine.info()["SystemTime"])
    filters = {"type": ["container"], "label": [f"{key}={value}"]}
    with engine.events(since=engine_now - dt.timedelta(seconds=1), filters=filters) as events:
        watchdog = threading.Timer(90, events.close)  # never hang the suite
        watchdog.start()
        try:
            cid = engine.run(spec(["sleep", "600"], labels={key: value}))
            seen = []
            for event in events:
                seen.append((event["Action"], event["Actor"]["ID"]))
                if event["Action"] == "start":
                    break
        finally:
            watchdog.cancel()
    assert seen[-1] == ("start", cid)
    assert ("create", cid) in seen


def test_an_event_stream_closed_from_another_thread_ends_its_reader(
    engine: DockerEngine,
) -> None:
    events = engine.events(filters={"label": ["dvt-eng-never=1"]})
    received: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: received.extend(events))
    reader.start()
    time.sleep(1)
    assert reader.is_alive()  # blocked: no event, no read timeout
    events.close()
    reader.join(10)
    assert not reader.is_alive() and received == []
    assert engine.ping()


# -- the engine does not answer ------------------------------------------------------


@pytest.fixture
def unreachable() -> Iterator[DockerEngine]:
    """An engine nobody listens for."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with DockerEngine(DockerEndpoint("127.0.0.1", port), timeout=5) as engine:
        yield engine


def test_an_engine_that_does_not_answer(unreachable: DockerEngine) -> None:
    assert not unreachable.ping()
    with pytest.raises(EngineUnavailable, match=r"does not answer") as refused:
        unreachable.containers()
    assert isinstance(refused.value, errors.EngineUnavailable)  # 503 in the API
    assert isinstance(refused.value, EngineError)
    with pytest.raises(EngineUnavailable, match=r"does not answer"):
        unreachable.exec_socket("web", ["sh"])
    with pytest.raises(EngineUnavailable, match=r"does not answer"):
        unreachable.events()


# -- TLS: the engine must carry the expected name ------------------------------------

SERVER_NAME = "x.vm.dockvisor"


@dataclass
class TLSFiles:
    ca: Path
    client_cert: Path
    client_key: Path
    server_context: ssl.SSLContext

    def client_context(self, *, with_certificate: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    dns: str | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signer = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway servers CA, a clients CA, an engine certificate for SERVER_NAME and a
    client certificate: the shape of dockvisor's own PKI."""
    tmp = tmp_path_factory.mktemp("tls")
    server_ca_key, client_ca_key, server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    server_ca = _certificate("test servers CA", server_ca_key)
    client_ca = _certificate("test clients CA", client_ca_key)
    server = _certificate(
        SERVER_NAME, server_key, (server_ca, server_ca_key),
        dns=SERVER_NAME, usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )  # fmt: skip
    client = _certificate(
        "dockvisor", client_key, (client_ca, client_ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    ca = _write(tmp / "ca.pem", server_ca, server_ca_key)
    client_ca_file = _write(tmp / "client-ca.pem", client_ca, client_ca_key)
    server_file = _write(tmp / "server.pem", server, server_key)
    client_file = _write(tmp / "client.pem", client, client_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca_file)
    context.load_cert_chain(server_file, server_file.with_suffix(".key"))
    context.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as dockerd --tlsverify
    return TLSFiles(ca, client_file, client_file.with_suffix(".key"), context)


class _FakeEngine(BaseHTTPRequestHandler):
    """Just enough of the Engine API: ping, version, an exec that says hi."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/v1.41/_ping":
            self._answer(200, b"OK")
        elif self.path == "/v1.41/version":
            self._answer(200, {"Version": "fake"})
        else:
            self._answer(404, {"message": "page not found"})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1.41/containers/web/exec":
            self._answer(201, {"Id": "e1"})
        elif self.path == "/v1.41/exec/e1/start" and self.headers.get("Upgrade") == "tcp":
            self.wfile.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n")
            self.wfile.write(b"\r\nhi from exec\n")
            self.close_connection = True
        elif self.path == "/v1.41/containers/cat/exec":
            self._answer(201, {"Id": "e2"})
        elif self.path == "/v1.41/exec/e2/start" and self.headers.get("Upgrade") == "tcp":
            # like dockerd: echo stdin until the client's close_notify, then answer more
            self.wfile.write(
                b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
            )
            while data := self.rfile.read1(65536):
                self.wfile.write(data)
            self.wfile.write(b"[stdin ended]")
            self.close_connection = True
        else:
            self._answer(404, {"message": "page not found"})


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles) -> Iterator[int]:
    """A local TLS engine with the certificate of SERVER_NAME; its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEngine)
    server.daemon_threads = True
    server.socket = tls_files.server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _tls_engine(port: int, server_name: str | None, context: ssl.SSLContext) -> DockerEngine:
    endpoint = DockerEndpoint("127.0.0.1", port, tls=True, server_name=server_name)
    return DockerEngine(endpoint, ssl_context=context, timeout=5)


def test_tls_accepts_the_engine_named_in_its_certificate(
    tls_server: int, tls_files: TLSFiles
) -> None:
    with _tls_engine(tls_server, SERVER_NAME, tls_files.client_context()) as engine:
        assert engine.ping()
        assert engine.version() == {"Version": "fake"}
        assert engine.wait_until_ready(5) < 1
        with engine.exec_socket("web", ["sh"]) as session:
            assert isinstance(session.sock, socket.socket)  # TLS runs in memory on top
            assert not isinstance(session.sock, ssl.SSLSocket)
            assert session.exec_id == "e1"
            assert session.read_all() == b"hi from exec\n"


def test_tls_exec_half_close_ends_stdin_and_the_output_still_comes(
    tls_server: int, tls_files: TLSFiles
) -> None:
    data = bytes(range(256)) * 800  # 200 KB: more than any buffer on the way holds
    with _tls_engine(tls_server, SERVER_NAME, tls_files.client_context()) as engine:
        with engine.exec_socket("cat", ["cat"], tty=False) as session:
            session.sock.settimeout(10)

            def feed() -> None:  # stdin from another thread while this one reads
                for start in range(0, len(data), 7000):
                    session.sendall(data[start : start + 7000])
                session.close_write()
                session.close_write()  # again: nothing more happens

            writer = threading.Thread(target=feed)
            writer.start()
            output = session.read_all()
            writer.join()
            assert output == data + b"[stdin ended]"
            with pytest.raises(BrokenPipeError):
                session.sendall(b"too late")


@pytest.mark.parametrize("server_name", ["y.vm.dockvisor", None], ids=["other-name", "address"])
def test_tls_refuses_an_engine_with_another_name(
    tls_server: int, tls_files: TLSFiles, server_name: str | None
) -> None:
    expected = server_name or "127.0.0.1"
    with _tls_engine(tls_server, server_name, tls_files.client_context()) as engine:
        assert not engine.ping()
        with pytest.raises(EngineCertificateError, match=f"is not the engine '{expected}'"):
            engine.version()
        started = time.monotonic()
        with pytest.raises(EngineCertificateError):  # at once, not after the timeout
            engine.wait_until_ready(30)
        assert time.monotonic() - started < 5
        with pytest.raises(EngineCertificateError):
            engine.events()
        # the hijacked exec connection checks the name the same way
        with pytest.raises(EngineCertificateError, match="Hostname mismatch|IP address mismatch"):
            engine._connect("attaching")


def test_tls_without_a_client_certificate_is_refused_by_the_engine(
    tls_server: int, tls_files: TLSFiles
) -> None:
    context = tls_files.client_context(with_certificate=False)
    with _tls_engine(tls_server, SERVER_NAME, context) as engine:
        with pytest.raises(EngineUnavailable) as refused:
            engine.version()
    assert not isinstance(refused.value, EngineCertificateError)


def test_tls_needs_a_context_that_checks_names(tls_files: TLSFiles) -> None:
    endpoint = DockerEndpoint("127.0.0.1", 1, tls=True, server_name=SERVER_NAME)
    with pytest.raises(ValueError, match="an ssl_context is needed"):
        DockerEngine(endpoint)
    lax = tls_files.client_context()
    lax.check_hostname = False
    with pytest.raises(ValueError, match="must verify certificates and their names"):
        DockerEngine(endpoint, ssl_context=lax)
