"""What every start of a dockvisor VM's QEMU needs first, in one place: its Docker
forward on a free port of 127.0.0.1, and its network card on this host's guest network
(guest_network.py), whose frame guard runs before QEMU connects to it and is ended if
the start fails.

Every path that starts QEMU goes through `StartPreparation.starting`: a start, the paused
start that loads a memory snapshot, the paused start that lets a stopped VM's disk be
copied for a clone. A reboot keeps its QEMU (and so its network).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import replace

import libvirt

from dockvisor.drivers.libvirt.domain_xml import (
    DomainConfig,
    parse_domain_xml,
    qemu_args_of,
    with_network,
)
from dockvisor.drivers.libvirt.errors import libvirt_errors
from dockvisor.drivers.libvirt.guest_network import (
    GuestNetworks,
    default_run_dir,
    guest_network_mode,
    qemu_owner,
)
from dockvisor.drivers.libvirt.host_locks import host_lock
from dockvisor.drivers.libvirt.ports import port_is_free, port_range
from dockvisor.errors import HypervisorError

__all__ = ["StartPreparation"]


class StartPreparation:
    """The ports and guest networks of one libvirt connection's VMs. `qemu`: the
    connection runs QEMU guests; `local`: on this machine (only then can the Docker port
    be reached on 127.0.0.1 and a frame guard be started)."""

    def __init__(
        self, conn: libvirt.virConnect, *, qemu: bool, local: bool, virt_type: str
    ) -> None:
        self._conn = conn
        self._qemu = qemu
        self._forward = qemu and local
        self._networks: GuestNetworks | None = None
        if qemu and local:
            with libvirt_errors("querying the host's capabilities"):
                owner = qemu_owner(conn.getCapabilities(), virt_type)
            self._networks = GuestNetworks(default_run_dir(), owner)

    def allocate_port(self, *, exclude: set[int] | None = None) -> int | None:
        """A host port for a new Docker forward: in the range, named by no domain's
        persistent configuration (which holds it across reverts too), free now. None
        where there is no loopback forward."""
        if not self._forward:
            return None
        used = set(exclude or ())
        with libvirt_errors("listing domains"):
            domains = list(self._conn.listAllDomains(0))
        for dom in domains:
            with suppress(libvirt.libvirtError, ValueError):
                xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
                if port := parse_domain_xml(xml).config.docker_host_port:
                    used.add(port)
        low, high = port_range()
        for port in range(low, high + 1):
            if port not in used and port_is_free(port):
                return port
        raise HypervisorError(f"no free port on 127.0.0.1 in {low}-{high} for a Docker forward")

    def nic_socket(self, name: str) -> str | None:
        """Where VM `name`'s card meets its frame guard on this host now; None: isolated."""
        if self._networks is None or guest_network_mode() == "isolated":
            return None
        return self._networks.nic_socket(name)

    def _prepare(self, dom: libvirt.virDomain) -> tuple[libvirt.virDomain, DomainConfig]:
        """Move the Docker forward if another program took its port, and put the card on
        this host's guest network now: a VM defined earlier, or a snapshot's
        configuration, may name another, or the bare slirp of earlier dockvisor versions,
        whose gateway is the host's loopback."""
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        config = parse_domain_xml(xml).config
        if not (self._qemu and config.managed and config.kind in ("vm", "spare")):
            return dom, config
        port = config.docker_host_port
        if port and self._forward and not port_is_free(port):
            port = self.allocate_port(exclude={port})
        nic_socket = self.nic_socket(config.name)
        changed = with_network(xml, host_port=port, nic_socket=nic_socket)
        if port != config.docker_host_port or qemu_args_of(changed) != qemu_args_of(xml):
            with libvirt_errors(f"preparing the start of {config.name}"):
                dom = self._conn.defineXML(changed)
        return dom, replace(config, docker_host_port=port, nic_socket=nic_socket)

    @contextmanager
    def starting(self, dom: libvirt.virDomain) -> Iterator[libvirt.virDomain]:
        """Run the block that starts `dom`'s QEMU (given the domain to start, which may
        have been redefined) with what it needs running; undone if the block fails.
        Starts on this machine run one at a time: a port found free here stays free
        until this QEMU has taken it (two starts at once could pick the same one)."""
        with host_lock("starts") if self._forward else nullcontext():
            dom, config = self._prepare(dom)
            if config.nic_socket is None or self._networks is None:
                yield dom
                return
            with self._networks.running(config.name, guest_port=config.docker_guest_port):
                yield dom

    def forget(self, name: str) -> None:
        """VM `name` is gone: remove what its network may have left."""
        if self._networks is not None:
            self._networks.stop(name)
