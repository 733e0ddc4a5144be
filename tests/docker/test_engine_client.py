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
import secrets
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dockvisor.domain.sizes import MiB
from dockvisor.engines.docker import (
    ContainerSpec,
    DockerEngine,
    EngineError,
    PortBinding,
    demultiplex,
)
from dockvisor.errors import AlreadyExists, BadPowerState, NotFound
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
