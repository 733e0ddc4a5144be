"""The counters of a host's running VMs, for their graphs (`usage_counters`).

One `getAllDomainStats` request reads every running domain of the host: CPU time,
vCPUs, the balloon (the memory the VM has, and what its guest uses), and the bytes read
and written of each disk and received and sent of each network interface libvirt knows.
A domain busy with a job that excludes queries (loading a memory snapshot) is waited
for; libvirt gives up after 30 s and leaves out that domain's counters that need QEMU's
monitor (its disks, its guest's memory account), which then make no rate. Asking
without waiting (NOWAIT) was tried: every query of another thread (the inventory reading
the balloon) then cut counters out of readings.

Two holes in that answer, and how each is filled:

- The network card of dockvisor's QEMU guests is not an `<interface>` libvirt knows (it
  is QEMU's own netdev behind the frame guard: guest_network.py), so libvirt has no
  counters for it. The guest agent's counters of the card stand in: the interface whose
  hardware address is the VM's MAC in `guest-network-get-interfaces`, one agent request
  per running VM that has no interface counters (GuestCards: several at once, and an
  agent that fails left alone for a minute). What a guest says of its own card draws
  only its own graph. libvirt notes such a request in the domain's log, once
  ("tainted: custom-ga-command"), as it notes snapshots.py's monitor command.
- libvirt's test driver answers with the state alone: its domains are read one by one
  (`info`, `memoryStats`, `blockStats`, `interfaceStats`), which in-process costs nothing.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from functools import cached_property
from typing import Any

import libvirt

from dockvisor.domain.metrics import UsageCounters
from dockvisor.domain.model import Capability
from dockvisor.domain.sizes import KiB
from dockvisor.drivers.libvirt.domain_xml import parse_domain_xml
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.errors import DockvisorError, Unsupported

__all__ = ["UsageReading", "card_counters", "counters_from_stats"]

_GROUPS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BLOCK
    | libvirt.VIR_DOMAIN_STATS_INTERFACE
)
_RUNNING_ONLY = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
# Per-device calls of the one-by-one reading: the record group, the XML element, the
# call, and where the fields of the record are in its answer.
_ONE_DEVICE = (
    ("block", "disk", "blockStats", (("rd.bytes", 1), ("wr.bytes", 3))),
    ("net", "interface", "interfaceStats", (("rx.bytes", 0), ("tx.bytes", 4))),
)
_AGENT_TIMEOUT = 2  # seconds a guest agent has to answer
_AGENT_QUIET = 60.0  # seconds a guest agent that did not is left alone
_AGENTS_AT_ONCE = 8
_RUNNING = libvirt.VIR_DOMAIN_RUNNING
_MAX_COUNTER = 2**64  # anything larger (or negative) is not a counter


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_COUNTER:
        return None
    return value


def _total(record: dict[str, Any], group: str, field: str) -> int | None:
    """The sum of `group.N.field` over the record's `group.count` devices (None if the
    record has no count, or misses the field of one of them)."""
    count = _count(record.get(f"{group}.count"))
    if count is None:
        return None
    values = [_count(record.get(f"{group}.{i}.{field}")) for i in range(count)]
    return None if None in values else sum(v for v in values if v is not None)


def counters_from_stats(record: dict[str, Any], now: float) -> UsageCounters | None:
    """A VM's counters from its record of `getAllDomainStats` (None without CPU time):
    memory used is the guest's own account (available minus unused) where its balloon
    driver reports one, else what the host holds for it (the QEMU process's RSS)."""
    cpu = _count(record.get("cpu.time"))
    if cpu is None:
        return None
    total = (_count(record.get("balloon.current")) or 0) * KiB
    available, unused = (
        _count(record.get("balloon.available")),
        _count(record.get("balloon.unused")),
    )
    used: int | None = None
    if available is not None and unused is not None:
        used = max(available - unused, 0) * KiB
    elif (rss := _count(record.get("balloon.rss"))) is not None:
        used = rss * KiB
    rx, tx = _total(record, "net", "rx.bytes"), _total(record, "net", "tx.bytes")
    if _count(record.get("net.count")) == 0:
        rx = tx = None  # no interface libvirt knows: no word on the network
    return UsageCounters(
        time=now,
        cpu_time_ns=cpu,
        vcpus=_count(record.get("vcpu.current")) or 1,
        memory_total=total,
        memory_used=used,
        disk_read=_total(record, "block", "rd.bytes"),
        disk_write=_total(record, "block", "wr.bytes"),
        net_rx=rx,
        net_tx=tx,
    )


def card_counters(reply: str, mac: str) -> tuple[int, int] | None:
    """(received, sent) bytes of the guest's interfaces with hardware address `mac`, from
    a guest agent's reply to `guest-network-get-interfaces`; None if it names none."""
    try:
        interfaces = json.loads(reply).get("return")
    except (ValueError, AttributeError):
        return None
    if not isinstance(interfaces, list):
        return None
    rx = tx = 0
    found = False
    for interface in interfaces:
        if not isinstance(interface, dict):
            continue
        if str(interface.get("hardware-address", "")).lower() != mac.lower():
            continue
        stats = interface.get("statistics")
        if not isinstance(stats, dict):
            continue
        received, sent = _count(stats.get("rx-bytes")), _count(stats.get("tx-bytes"))
        if received is None or sent is None:
            return None
        rx, tx, found = rx + received, tx + sent, True
    return (rx, tx) if found else None


class GuestCards:
    """The guest agents' counters of VMs' network cards: several agents asked at once, and
    one that fails or does not answer within _AGENT_TIMEOUT left alone for _AGENT_QUIET
    seconds, so that guests whose agent is gone (or made slow) cost the sampler little."""

    def __init__(self) -> None:
        self._macs: dict[str, str] = {}  # by domain UUID: a card's MAC never changes
        self._quiet: dict[str, float] = {}  # by domain UUID: not asked before this time

    def read(self, domains: list[libvirt.virDomain]) -> dict[str, tuple[int, int]]:
        """(received, sent) bytes by domain UUID, for those whose agent answered."""
        now = time.monotonic()
        asked = [d for d in domains if self._quiet.get(d.UUIDString(), 0.0) <= now]
        if not asked:
            return {}
        with ThreadPoolExecutor(min(len(asked), _AGENTS_AT_ONCE), "guest-agents") as pool:
            answers = list(pool.map(self._ask, asked))
        return {d.UUIDString(): a for d, a in zip(asked, answers, strict=True) if a is not None}

    def keep_only(self, uuids: set[str]) -> None:
        """Forget the domains not in `uuids` (stopped or gone)."""
        for known in (self._macs, self._quiet):
            for uuid in set(known) - uuids:
                del known[uuid]

    def _ask(self, dom: libvirt.virDomain) -> tuple[int, int] | None:
        import libvirt_qemu

        uuid = dom.UUIDString()
        counters = None
        try:
            if uuid not in self._macs:
                self._macs[uuid] = parse_domain_xml(dom.XMLDesc(0)).config.mac
            if not self._macs[uuid]:
                return None  # not a card dockvisor made (libvirt would know an <interface>)
            command = '{"execute": "guest-network-get-interfaces"}'
            reply = libvirt_qemu.qemuAgentCommand(dom, command, _AGENT_TIMEOUT, 0)
            counters = card_counters(str(reply), self._macs[uuid])
        except (libvirt.libvirtError, DockvisorError, ET.ParseError):
            pass  # no agent, not answering, or frozen for a clone: no word this time
        if counters is None:
            self._quiet[uuid] = time.monotonic() + _AGENT_QUIET
        return counters


class UsageReading:
    """`usage_counters` for LibvirtDriver (a base class of it, to keep driver.py small)."""

    uri: str
    capabilities: Capability
    _conn: Any

    @cached_property
    def _guest_cards(self) -> GuestCards:
        return GuestCards()

    def usage_counters(self) -> dict[str, UsageCounters]:
        if Capability.METRICS not in self.capabilities:
            raise Unsupported(f"{self.uri} does not report the counters of its VMs")
        with libvirt_errors(f"reading the counters of the VMs of {self.uri}"):
            records = self._conn.getAllDomainStats(_GROUPS, _RUNNING_ONLY)
        now = time.time()
        found, no_card = {}, []
        for dom, record in records:
            with suppress(libvirt.libvirtError):  # it stopped while we read it
                if "cpu.time" not in record:
                    record = {**record, **self._one_by_one(dom)}
                counters = counters_from_stats(record, now)
                if counters is None:
                    continue
                found[dom.UUIDString()] = counters
                if counters.net_rx is None and record.get("state.state") == _RUNNING:
                    no_card.append(dom)
        if Capability.GUEST_AGENT in self.capabilities:
            for name, (rx, tx) in self._guest_cards.read(no_card).items():
                found[name] = replace(found[name], net_rx=rx, net_tx=tx)
            self._guest_cards.keep_only({dom.UUIDString() for dom in no_card})
        return found

    @staticmethod
    def _one_by_one(dom: libvirt.virDomain) -> dict[str, Any]:
        """A domain's record built from per-domain calls (the test driver's bulk answer
        has the state alone)."""
        state, _max_kib, kib, vcpus, cpu = dom.info()
        record: dict[str, Any] = {
            "state.state": state, "cpu.time": cpu, "vcpu.current": vcpus, "balloon.current": kib,
        }  # fmt: skip
        with suppress(libvirt.libvirtError):
            for key, value in dom.memoryStats().items():
                if key in ("available", "unused", "rss"):
                    record[f"balloon.{key}"] = value
        devices = ET.fromstring(dom.XMLDesc(0)).find("devices")
        if devices is None:
            return record
        for group, tag, call, fields in _ONE_DEVICE:
            targets = [t.get("dev") for t in devices.findall(f"{tag}/target")]
            with suppress(libvirt.libvirtError):
                stats = [getattr(dom, call)(dev) for dev in targets if dev]
                for i, values in enumerate(stats):
                    for field, index in fields:
                        record[f"{group}.{i}.{field}"] = values[index]
                record[f"{group}.count"] = len(stats)
        return record
