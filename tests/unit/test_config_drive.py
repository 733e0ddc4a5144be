"""The config drive: a NoCloud `cidata` ISO 9660 image with the engine's identity."""

from __future__ import annotations

from pathlib import Path

from dockvisor.engines.pki import EnginePKI
from dockvisor.guest.config_drive import VOLUME_LABEL, build_config_drive, read_config_drive


def test_the_drive_holds_nocloud_metadata_and_the_engine_files(tmp_path: Path) -> None:
    server = EnginePKI(tmp_path / "pki").issue_server()
    image = build_config_drive("web", "dockvisor-1234", server)
    files = read_config_drive(image)
    assert set(files) == {
        "meta-data",
        "user-data",
        "dockvisor/engine/ca.pem",
        "dockvisor/engine/cert.pem",
        "dockvisor/engine/key.pem",
        "dockvisor/engine/server-name",
    }
    assert b'local-hostname: "web"' in files["meta-data"]
    assert b'instance-id: "dockvisor-1234"' in files["meta-data"]
    assert files["user-data"].startswith(b"#cloud-config")
    assert files["dockvisor/engine/cert.pem"] == server.cert_pem
    assert files["dockvisor/engine/key.pem"] == server.key_pem
    assert files["dockvisor/engine/ca.pem"] == server.client_ca_pem
    assert files["dockvisor/engine/server-name"].strip().decode() == server.server_name


def test_the_volume_is_labelled_cidata(tmp_path: Path) -> None:
    image = build_config_drive("web", "i", EnginePKI(tmp_path / "pki").issue_server())
    # The primary volume descriptor sits at sector 16; its volume identifier at byte 40.
    descriptor = image[16 * 2048 : 17 * 2048]
    assert descriptor[1:6] == b"CD001"
    assert descriptor[40:72].decode().strip() == VOLUME_LABEL
    assert len(image) < 512 * 1024  # a small disk
