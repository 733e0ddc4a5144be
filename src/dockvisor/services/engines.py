"""How dockvisor reaches the Docker engines inside its VMs.

A Docker-ready VM gets, at creation (and a clone at cloning), a server certificate of its
own on its config drive; dockvisor talks to its engine over mutual TLS with the client
certificate of its PKI and checks the engine's certificate name. The address comes from
the hypervisor adapter (a loopback forward, or the guest agent's IP): never from a request.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from dockvisor.domain.model import DockerEndpoint, GuestConfig
from dockvisor.engines.docker import DockerEngine
from dockvisor.engines.pki import EngineCredentials, EnginePKI
from dockvisor.guest.config_drive import build_config_drive
from dockvisor.paths import data_dir

__all__ = ["EngineAccess"]

_defaults: dict[Path, EngineAccess] = {}
_defaults_lock = threading.Lock()


class EngineAccess:
    """dockvisor's PKI put to use: config drives for new VMs, TLS clients for engines."""

    def __init__(self, pki: EnginePKI) -> None:
        self.pki = pki

    @classmethod
    def at(cls, directory: Path) -> EngineAccess:
        """The one EngineAccess of a data directory (its PKI lives in `pki/`)."""
        key = directory.resolve()
        with _defaults_lock:
            if key not in _defaults:
                _defaults[key] = cls(EnginePKI(key / "pki"))
            return _defaults[key]

    @classmethod
    def default(cls) -> EngineAccess:
        """The PKI of the data directory (DOCKVISOR_DATA_DIR or its default)."""
        return cls.at(data_dir())

    def guest_config(self, hostname: str) -> GuestConfig:
        """A config drive with a new engine identity, for a VM about to be made."""
        server = self.pki.issue_server()
        drive = build_config_drive(hostname, f"dockvisor-{uuid.uuid4()}", server)
        return GuestConfig(drive=drive, engine_name=server.server_name)

    def engine(self, endpoint: DockerEndpoint, *, timeout: float = 30.0) -> DockerEngine:
        """A client of the engine at `endpoint` (over TLS if the engine has a certificate)."""
        if not endpoint.tls:
            return DockerEngine(endpoint, timeout=timeout)
        return DockerEngine(endpoint, ssl_context=self.pki.client_context(), timeout=timeout)

    @property
    def client_files(self) -> EngineCredentials:
        """dockvisor's client certificate files, laid out for DOCKER_CERT_PATH."""
        self.pki.ensure()
        return self.pki.client
