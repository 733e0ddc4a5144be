"""Host credentials sealed at rest (services/host_secrets.py)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dockvisor.drivers.registry import HostCredentials
from dockvisor.services.host_secrets import CredentialsUnreadable, CredentialVault


def test_sealed_credentials_open_again_and_hide_the_password(tmp_path: Path) -> None:
    vault = CredentialVault(tmp_path / "host-credentials.key")
    credentials = HostCredentials("root", "s3cret-pool-password", "PEM TEXT")
    sealed = vault.seal(credentials)
    assert "s3cret-pool-password" not in sealed and "root" not in sealed
    assert vault.open(sealed, "pool1") == credentials
    mode = stat.S_IMODE((tmp_path / "host-credentials.key").stat().st_mode)
    assert mode == 0o600
    # Another process with the same key file reads them too.
    assert CredentialVault(tmp_path / "host-credentials.key").open(sealed, "pool1") == credentials


def test_another_key_or_a_tampered_row_is_refused_not_half_read(tmp_path: Path) -> None:
    sealed = CredentialVault(tmp_path / "a.key").seal(HostCredentials("root", "pw"))
    with pytest.raises(CredentialsUnreadable, match="host pool1 cannot be decrypted"):
        CredentialVault(tmp_path / "b.key").open(sealed, "pool1")
    vault = CredentialVault(tmp_path / "a.key")
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(CredentialsUnreadable):
        vault.open(tampered, "pool1")
