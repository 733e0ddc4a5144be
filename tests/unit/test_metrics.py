"""The rules that turn counters into graph points (domain/metrics.py), and the reading of
libvirt's and the guest agent's answers (drivers/libvirt/usage.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from dockvisor.domain.metrics import (
    SERIES_FIELDS,
    MetricsPoint,
    UsageCounters,
    UsageHistory,
    container_usage,
    point_between,
    series,
)
from dockvisor.domain.sizes import GiB, KiB, MiB
from dockvisor.drivers.libvirt.usage import card_counters, counters_from_stats

GB = 10**9


def reading(t: float, **changes: Any) -> UsageCounters:
    values: dict[str, Any] = {
        "time": t,
        "cpu_time_ns": 0,
        "vcpus": 2,
        "memory_total": 1 * GiB,
        "memory_used": 200 * MiB,
        "disk_read": 0,
        "disk_write": 0,
        "net_rx": 0,
        "net_tx": 0,
    }
    values.update(changes)
    return UsageCounters(**values)


# -- one point --------------------------------------------------------------------------


def test_rates_over_the_time_between_two_readings() -> None:
    before = reading(100.0, cpu_time_ns=5 * GB, disk_read=1000, disk_write=0, net_rx=10, net_tx=0)
    after = reading(110.0, cpu_time_ns=15 * GB, disk_read=11000, disk_write=5000, net_rx=1010,
                    net_tx=100)  # fmt: skip
    point = point_between(before, after, max_interval=25)
    # 10 s of CPU in 10 s on 2 vCPUs: one of them busy, half the VM.
    assert point.cpu_percent == 50.0
    assert (point.disk_read, point.disk_write) == (1000.0, 500.0)
    assert (point.net_rx, point.net_tx) == (100.0, 10.0)
    assert (point.memory_used, point.memory_total, point.time) == (200 * MiB, 1 * GiB, 110.0)


def test_cpu_percent_stays_within_the_vcpus() -> None:
    before = reading(0.0, cpu_time_ns=0)
    # QEMU's own threads can add CPU time beyond what the vCPUs could use.
    after = reading(1.0, cpu_time_ns=3 * GB, vcpus=2)
    assert point_between(before, after, max_interval=25).cpu_percent == 100.0
    idle = reading(1.0, cpu_time_ns=0)
    assert point_between(before, idle, max_interval=25).cpu_percent == 0.0


def test_the_first_reading_has_memory_and_no_rates() -> None:
    point = point_between(None, reading(5.0, cpu_time_ns=9 * GB), max_interval=25)
    assert point.memory_used == 200 * MiB
    assert [point.cpu_percent, point.disk_read, point.disk_write, point.net_rx,
            point.net_tx] == [None] * 5  # fmt: skip


@pytest.mark.parametrize("counter", ["cpu_time_ns", "disk_read", "disk_write", "net_rx", "net_tx"])
def test_a_counter_that_went_down_gives_no_rate_at_all(counter: str) -> None:
    """The VM rebooted or was reverted between the readings: no negative rate, and no
    rate made of counters of two different runs."""
    before = reading(0.0, cpu_time_ns=50 * GB, disk_read=10**9, disk_write=10**9,
                     net_rx=10**9, net_tx=10**9)  # fmt: skip
    after = replace(before, time=10.0, **{counter: 5})
    point = point_between(before, after, max_interval=25)
    assert [point.cpu_percent, point.disk_read, point.disk_write, point.net_rx,
            point.net_tx] == [None] * 5  # fmt: skip
    assert point.memory_used == 200 * MiB  # the memory is still what it is


def test_readings_too_far_apart_give_no_rate() -> None:
    before = reading(0.0)
    after = reading(60.0, cpu_time_ns=30 * GB)
    assert point_between(before, after, max_interval=25).cpu_percent is None
    assert point_between(before, after, max_interval=60).cpu_percent == 25.0
    assert point_between(after, before, max_interval=25).cpu_percent is None  # clock went back


def test_unknown_counters_stay_unknown() -> None:
    before = reading(0.0, net_rx=None, net_tx=None, memory_used=None)
    after = reading(10.0, cpu_time_ns=2 * GB, net_rx=None, net_tx=None, memory_used=None)
    point = point_between(before, after, max_interval=25)
    assert point.cpu_percent == 10.0
    assert (point.net_rx, point.net_tx, point.memory_used) == (None, None, None)
    # A guest reporting more than the VM has (or the host's RSS beyond it) is clipped.
    over = point_between(None, reading(1.0, memory_used=2 * GiB), max_interval=25)
    assert over.memory_used == 1 * GiB


# -- the ring and the series ------------------------------------------------------------


def test_the_ring_keeps_one_hour() -> None:
    history = UsageHistory(period=10)
    for i in range(1000):
        history.add(reading(i * 10.0, cpu_time_ns=i * GB))
    assert len(history) == 361
    points = history.points()
    assert points[0].time == 639 * 10.0 and points[-1].time == 999 * 10.0
    assert history.newest == 9990.0
    assert all(p.cpu_percent == 5.0 for p in points)
    assert len(history.points(since=9990.0 - 60)) == 7
    fast = UsageHistory(period=1)
    for i in range(4000):
        fast.add(reading(float(i)))
    assert len(fast) == 3601 and fast.points()[0].time == 399.0
    with pytest.raises(ValueError):
        UsageHistory(period=0)


def test_a_stopped_vm_leaves_a_gap_marked_by_nulls() -> None:
    history = UsageHistory(period=10)
    for t in (0, 10, 20):
        history.add(reading(float(t), cpu_time_ns=t * GB))
    # Stopped for a minute, started again: its counters start from zero.
    for t in (90, 100):
        history.add(reading(float(t), cpu_time_ns=(t - 90) * GB))
    got = series(history.points(), period=10, until=105.0)
    assert list(got) == list(SERIES_FIELDS)
    assert got["time"] == [0.0, 10.0, 20.0, 30.0, 90.0, 100.0]
    assert got["cpu_percent"] == [None, 50.0, 50.0, None, None, 50.0]
    assert got["memory_used"] == [200 * MiB] * 3 + [None] + [200 * MiB] * 2
    assert all(len(values) == 6 for values in got.values())


def test_a_vm_that_is_not_running_now_ends_with_a_gap() -> None:
    points = [MetricsPoint(t, 1.0, 1, 2, 0.0, 0.0, 0.0, 0.0) for t in (0.0, 10.0)]
    assert series(points, period=10, until=15.0)["time"] == [0.0, 10.0]
    stopped = series(points, period=10, until=200.0)
    assert stopped["time"] == [0.0, 10.0, 20.0] and stopped["cpu_percent"][-1] is None
    assert series([], period=10, until=200.0) == {name: [] for name in SERIES_FIELDS}


# -- containers -------------------------------------------------------------------------


def docker_stats(**changes: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000_000_000},
            "system_cpu_usage": 110_000_000_000,
            "online_cpus": 2,
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 2_000_000_000},
            "system_cpu_usage": 108_000_000_000,
        },
        "memory_stats": {"usage": 50 * MiB, "limit": 1 * GiB, "stats": {"inactive_file": 8 * MiB}},
    }
    stats.update(changes)
    return stats


def test_container_cpu_is_its_share_of_the_cpus_time_times_the_cpus() -> None:
    # 1 s of the container's CPU in 2 s of all CPUs' time, on 2 CPUs: one CPU, 100 %.
    usage = container_usage(docker_stats())
    assert usage.cpu_percent == 100.0 and usage.online_cpus == 2
    assert usage.memory_used == 42 * MiB and usage.memory_limit == 1 * GiB


def test_container_cpu_without_a_first_reading_is_unknown_and_idle_is_zero() -> None:
    # `one-shot` stats: precpu_stats is empty (docker stats would show an average since
    # the machine started).
    assert container_usage(docker_stats(precpu_stats={})).cpu_percent is None
    idle = docker_stats()
    idle["cpu_stats"]["cpu_usage"]["total_usage"] = 2_000_000_000
    assert container_usage(idle).cpu_percent == 0.0


def test_container_cpus_counted_from_percpu_usage_when_online_cpus_is_absent() -> None:
    stats = docker_stats()
    del stats["cpu_stats"]["online_cpus"]
    stats["cpu_stats"]["cpu_usage"]["percpu_usage"] = [1, 2, 3, 4]
    assert container_usage(stats).cpu_percent == 200.0


def test_container_memory_under_cgroup_v1_and_odd_documents() -> None:
    stats = {"total_inactive_file": 30 * MiB, "cache": 60 * MiB}
    v1 = docker_stats(memory_stats={"usage": 100 * MiB, "limit": 2 * GiB, "stats": stats})
    assert container_usage(v1).memory_used == 70 * MiB
    bogus = docker_stats(memory_stats={"usage": 10, "stats": {"inactive_file": 99}})
    assert container_usage(bogus).memory_used == 10
    empty = container_usage({})
    assert (empty.cpu_percent, empty.memory_used, empty.memory_limit) == (None, 0, 0)


# -- libvirt's records ------------------------------------------------------------------


QEMU_RECORD = {
    "state.state": 1,
    "cpu.time": 18467977000,
    "balloon.current": 1048576,
    "balloon.maximum": 2097152,
    "balloon.unused": 763644,
    "balloon.available": 977952,
    "balloon.rss": 881728,
    "vcpu.current": 2,
    "vcpu.maximum": 4,
    "net.count": 0,
    "block.count": 2,
    "block.0.name": "vda",
    "block.0.rd.bytes": 122955264,
    "block.0.wr.bytes": 1421312,
    "block.1.name": "vdb",
    "block.1.rd.bytes": 23552,
    "block.1.wr.bytes": 0,
}


def test_a_qemu_record_gives_the_guests_own_memory_account() -> None:
    counters = counters_from_stats(QEMU_RECORD, 42.0)
    assert counters == UsageCounters(
        time=42.0,
        cpu_time_ns=18467977000,
        vcpus=2,
        memory_total=1 * GiB,
        memory_used=(977952 - 763644) * KiB,
        disk_read=122955264 + 23552,
        disk_write=1421312,
        net_rx=None,  # no interface libvirt knows (the guest agent's count stands in)
        net_tx=None,
    )


def test_a_record_without_the_guests_account_falls_back_to_the_host_rss() -> None:
    record = {k: v for k, v in QEMU_RECORD.items() if k not in ("balloon.available",
                                                                "balloon.unused")}  # fmt: skip
    counters = counters_from_stats(record, 0.0)
    assert counters is not None and counters.memory_used == 881728 * KiB


def test_a_record_with_interfaces_and_missing_parts() -> None:
    record = {**QEMU_RECORD, "net.count": 1, "net.0.rx.bytes": 10, "net.0.tx.bytes": 20}
    counters = counters_from_stats(record, 0.0)
    assert counters is not None and (counters.net_rx, counters.net_tx) == (10, 20)
    # A device's counter missing (the domain was busy): the total is unknown, not short.
    partial = {k: v for k, v in QEMU_RECORD.items() if k != "block.1.rd.bytes"}
    counters = counters_from_stats(partial, 0.0)
    assert counters is not None and counters.disk_read is None and counters.disk_write == 1421312
    assert counters_from_stats({"state.state": 1}, 0.0) is None  # no CPU time: no reading
    assert counters_from_stats({**QEMU_RECORD, "cpu.time": -1}, 0.0) is None


def agent_reply(*interfaces: dict[str, Any]) -> str:
    return json.dumps({"return": list(interfaces)})


def card(name: str, mac: str, rx: Any, tx: Any) -> dict[str, Any]:
    return {"name": name, "hardware-address": mac,
            "statistics": {"rx-bytes": rx, "tx-bytes": tx, "rx-packets": 1}}  # fmt: skip


def test_the_guest_agent_counts_the_card_with_the_vms_mac_only() -> None:
    reply = agent_reply(
        card("lo", "00:00:00:00:00:00", 999, 999),
        card("eth0", "52:54:00:f1:9a:3c", 6119, 7809),
        card("docker0", "02:42:94:83:5c:00", 500, 500),  # containers' traffic, counted by eth0
    )
    assert card_counters(reply, "52:54:00:F1:9A:3C") == (6119, 7809)
    assert card_counters(reply, "52:54:00:00:00:01") is None


@pytest.mark.parametrize(
    "reply",
    [
        "not json",
        "[]",
        json.dumps({"return": "x"}),
        json.dumps({"return": [1, {"hardware-address": "52:54:00:00:00:01"}]}),
        agent_reply(card("eth0", "52:54:00:00:00:01", -5, 10)),
        agent_reply(card("eth0", "52:54:00:00:00:01", "5", 10)),
        agent_reply(card("eth0", "52:54:00:00:00:01", 2**70, 10)),
    ],
)
def test_what_a_guest_agent_says_is_not_trusted_to_be_well_formed(reply: str) -> None:
    assert card_counters(reply, "52:54:00:00:00:01") is None
