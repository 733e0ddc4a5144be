"""The config drive: a small read-only disk that hands a VM what it needs at boot.

It follows cloud-init's NoCloud layout (an ISO 9660 volume labelled `cidata` holding
`meta-data` and `user-data`), so a stock cloud image would read its identity from it too;
dockvisor's own guest init also reads the `dockvisor/` directory on it:

    meta-data                  instance-id and local-hostname (YAML)
    user-data                  "#cloud-config" (nothing for cloud-init to do)
    dockvisor/engine/ca.pem    the CA whose clients the Docker engine accepts
    dockvisor/engine/cert.pem  the engine's server certificate
    dockvisor/engine/key.pem   its key

The guest reads the drive on every boot, so a clone, which gets a new drive, gets a new
engine identity even though its disk is a copy of another VM's.
"""

from __future__ import annotations

import io
import json

import pycdlib

from dockvisor.engines.pki import ServerCertificate

__all__ = ["VOLUME_LABEL", "build_config_drive", "read_config_drive"]

VOLUME_LABEL = "cidata"


def _files(hostname: str, instance_id: str, engine: ServerCertificate) -> dict[str, bytes]:
    meta = (
        f"instance-id: {json.dumps(instance_id)}\nlocal-hostname: {json.dumps(hostname)}\n"
    ).encode()
    return {
        "meta-data": meta,
        "user-data": b"#cloud-config\n",
        "dockvisor/engine/ca.pem": engine.client_ca_pem,
        "dockvisor/engine/cert.pem": engine.cert_pem,
        "dockvisor/engine/key.pem": engine.key_pem,
        "dockvisor/engine/server-name": engine.server_name.encode() + b"\n",
    }


def _iso_name(path: str, *, directory: bool) -> str:
    """An ISO 9660 level-4 name for `path` (Rock Ridge carries the real one)."""
    parts = [p.upper().replace("-", "_") for p in path.split("/")]
    return "/" + "/".join(parts) + ("" if directory else ";1")


def build_config_drive(hostname: str, instance_id: str, engine: ServerCertificate) -> bytes:
    """The drive's image (ISO 9660 with Rock Ridge and Joliet, label `cidata`)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, rock_ridge="1.09", joliet=3, vol_ident=VOLUME_LABEL)
    made: set[str] = set()
    try:
        for path, data in _files(hostname, instance_id, engine).items():
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    iso.add_directory(
                        _iso_name(directory, directory=True),
                        rr_name=parts[depth - 1],
                        joliet_path="/" + directory,
                    )
                    made.add(directory)
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                _iso_name(path, directory=False),
                rr_name=parts[-1],
                joliet_path="/" + path,
                file_mode=0o100400 if path.endswith("key.pem") else 0o100444,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def read_config_drive(image: bytes) -> dict[str, bytes]:
    """The files on a config drive image, by their real (Rock Ridge) paths. For tests
    and for checking what a VM was given."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    files: dict[str, bytes] = {}
    try:
        for root, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                path = f"{root.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                files[path.lstrip("/")] = out.getvalue()
    finally:
        iso.close()
    return files
