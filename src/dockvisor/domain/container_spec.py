"""A container to create, in dockvisor's words, and the rules it must keep: pure, no I/O.

`ContainerSpec.request()` checks a spec and turns it into the query and body of the
Docker Engine API's `POST /containers/create`; a spec that breaks a rule is refused with
InvalidInput before any request is made. The rules are dockerd's own (container names,
restart policies, the smallest memory limit), so that a refusal comes early and in
dockvisor's words, plus two of dockvisor's: the command is a list of arguments, never a
string for a shell; and a container keeps what it writes byte for byte (LOG_DRIVER).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dockvisor.errors import InvalidInput

__all__ = ["LOG_DRIVER", "MIN_MEMORY", "ContainerSpec", "PortBinding"]

MIN_MEMORY = 6 * 1024 * 1024  # the smallest memory limit dockerd accepts (6 MiB)
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # dockerd's rule for container names
_RESTART = re.compile(r"no|always|unless-stopped|on-failure(:(?P<retries>\d+))?")
# Nothing a container writes may be lost: dockerd's default json-file driver keeps each
# line as a JSON string and replaces every byte that is not UTF-8 (measured: the 256 byte
# values come back as 512 bytes), while the `local` driver keeps the bytes as written.
LOG_DRIVER = "local"


class PortBinding(NamedTuple):
    """A host port published to a container port; plain (host, container[, proto[, ip]])
    tuples are accepted wherever a PortBinding is."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = "0.0.0.0"


@dataclass(frozen=True)
class ContainerSpec:
    """A container to create, in dockvisor's words; checked before any request.

    `volumes` are binds "SRC:DST[:ro|rw]" (SRC an absolute path or a named volume) or an
    anonymous volume "DST". `restart_policy` is "no", "always", "unless-stopped" or
    "on-failure[:N]". `cpus` becomes NanoCpus, `memory` is a limit in bytes (>= 6 MiB).
    """

    image: str
    command: Sequence[str] | None = None
    name: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: Sequence[PortBinding | tuple[Any, ...]] = ()
    volumes: Sequence[str] = ()
    restart_policy: str = "no"
    cpus: float | None = None
    memory: int | None = None
    tty: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def request(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The query and body of POST /containers/create; InvalidInput if unusable."""
        if not self.image or not self.image.strip():
            raise InvalidInput("a container needs an image")
        if self.command is not None and isinstance(self.command, str):
            raise InvalidInput("give the command as a list of arguments, not one string")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise InvalidInput(
                f"invalid container name {self.name!r}: use at least 2 characters of "
                "[a-zA-Z0-9_.-], starting with a letter or digit"
            )
        for key in self.env:
            if not key or "=" in key or "\x00" in key:
                raise InvalidInput(f"invalid environment variable name {key!r}")
        host: dict[str, Any] = {
            "RestartPolicy": _restart_policy(self.restart_policy),
            "LogConfig": {"Type": LOG_DRIVER, "Config": {}},
        }
        body: dict[str, Any] = {"Image": self.image, "Tty": self.tty, "HostConfig": host}
        if self.command is not None:
            body["Cmd"] = list(self.command)
        if self.env:
            body["Env"] = [f"{k}={v}" for k, v in self.env.items()]
        if self.labels:
            body["Labels"] = dict(self.labels)
        if self.ports:
            exposed: dict[str, dict[str, Any]] = {}
            bindings: dict[str, list[dict[str, str]]] = {}
            for port in self.ports:
                binding = _port_binding(port)
                key = f"{binding.container_port}/{binding.protocol}"
                exposed[key] = {}
                bindings.setdefault(key, []).append(
                    {"HostIp": binding.host_ip, "HostPort": str(binding.host_port)}
                )
            body["ExposedPorts"] = exposed
            host["PortBindings"] = bindings
        binds, anonymous = _volumes(self.volumes)
        if binds:
            host["Binds"] = binds
        if anonymous:
            body["Volumes"] = {path: {} for path in anonymous}
        if self.cpus is not None:
            if not self.cpus > 0:
                raise InvalidInput(f"cpus must be more than 0, not {self.cpus}")
            host["NanoCpus"] = round(self.cpus * 1e9)
        if self.memory is not None:
            if isinstance(self.memory, bool) or self.memory < MIN_MEMORY:
                raise InvalidInput(
                    f"a memory limit must be at least 6 MiB ({MIN_MEMORY} bytes), not {self.memory}"
                )
            host["Memory"] = int(self.memory)
        return ({"name": self.name} if self.name else {}), body


def _restart_policy(policy: str) -> dict[str, Any]:
    match = _RESTART.fullmatch(policy)
    if not match:
        raise InvalidInput(
            f"invalid restart policy {policy!r}: use no, always, unless-stopped or on-failure[:N]"
        )
    name = policy.split(":")[0]
    retries = int(match["retries"]) if match["retries"] else 0
    return {"Name": "" if name == "no" else name, "MaximumRetryCount": retries}


def _port_binding(port: PortBinding | tuple[Any, ...]) -> PortBinding:
    if not isinstance(port, tuple) or not 2 <= len(port) <= 4:
        raise InvalidInput(
            f"invalid port {port!r}: give (host_port, container_port[, protocol[, host_ip]])"
        )
    binding = PortBinding(*port)
    for which, number in (("host", binding.host_port), ("container", binding.container_port)):
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise InvalidInput(f"invalid {which} port {number!r}: ports are 1 to 65535")
    if binding.protocol not in ("tcp", "udp"):
        raise InvalidInput(f"invalid protocol {binding.protocol!r}: use tcp or udp")
    if not isinstance(binding.host_ip, str) or not binding.host_ip:
        raise InvalidInput(f"invalid host address {binding.host_ip!r}")
    return binding


def _volumes(volumes: Sequence[str]) -> tuple[list[str], list[str]]:
    binds, anonymous = [], []
    for volume in volumes:
        parts = volume.split(":") if isinstance(volume, str) else []
        if len(parts) == 1 and parts[0].startswith("/"):
            anonymous.append(parts[0])
            continue
        if len(parts) not in (2, 3):
            raise InvalidInput(f"invalid volume {volume!r}: use SRC:DST[:ro] or DST")
        source, target = parts[0], parts[1]
        if not (source.startswith("/") or _NAME.fullmatch(source)):
            raise InvalidInput(
                f"invalid volume {volume!r}: the source is an absolute path or a volume "
                "name of [a-zA-Z0-9_.-]"
            )
        if not target.startswith("/"):
            raise InvalidInput(f"invalid volume {volume!r}: the target must be an absolute path")
        if len(parts) == 3 and parts[2] not in ("ro", "rw"):
            raise InvalidInput(f"invalid volume {volume!r}: the mode is ro or rw")
        binds.append(volume)
    return binds, anonymous
