"""Host credentials (a XAPI pool's user, password and trusted certificate) at rest.

They are stored in the hosts table encrypted with a key kept in the data directory
(`host-credentials.key`, mode 0600, made on first use), never in the database in clear:
a copy of the database alone does not give away a pool's root password. The key is
Fernet's (AES-128-CBC with HMAC-SHA256, from `cryptography`); a ciphertext that does not
authenticate (another key, a tampered row) is refused, not half-read.

Every server process sharing one database needs the same key file (as for the audit key).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from dockvisor.drivers.registry import HostCredentials
from dockvisor.errors import DockvisorError
from dockvisor.paths import create_private_file

__all__ = ["CredentialVault", "CredentialsUnreadable"]


class CredentialsUnreadable(DockvisorError):
    """The stored credentials cannot be decrypted with this data directory's key."""


class CredentialVault:
    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._fernet: Fernet | None = None
        self._lock = threading.Lock()

    def _key(self) -> Fernet:
        with self._lock:
            if self._fernet is None:
                if not self.key_file.exists():
                    create_private_file(self.key_file, Fernet.generate_key().decode() + "\n")
                self._fernet = Fernet(self.key_file.read_text().strip().encode())
            return self._fernet

    def seal(self, credentials: HostCredentials) -> str:
        plain = {"user": credentials.user, "password": credentials.password}
        if credentials.certificate:
            plain["certificate"] = credentials.certificate
        return self._key().encrypt(json.dumps(plain).encode()).decode()

    def open(self, sealed: str, host: str) -> HostCredentials:
        try:
            plain = json.loads(self._key().decrypt(sealed.encode()))
        except (InvalidToken, ValueError):
            raise CredentialsUnreadable(
                f"the credentials of host {host} cannot be decrypted with {self.key_file} "
                "(every server process sharing a database needs the same key file); "
                "add the host again with its credentials"
            ) from None
        return HostCredentials(plain["user"], plain["password"], plain.get("certificate"))
