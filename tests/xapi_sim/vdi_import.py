"""PUT /import_raw_vdi: upload a disk image into an existing VDI.

Source: ocaml/xapi/import_raw_vdi.ml and xapi_http.ml. The session comes from the
`session_id` query parameter (a bad one is HTTP 401, Http.Unauthorised); `vdi` is a
ref or a uuid (an unknown one makes the handler raise: 500 here); `format` is
raw (default) or vhd here (real also takes tar and qcow2; unknown formats are 404);
a Transfer-Encoding (chunked) upload is refused with 404 ("Cannot handle encoding").
A request to a member is redirected (302) to the master, as return_302_redirect does
for an SR the member cannot see. Real xapi sends 200 before streaming and reports a
write beyond the disk's size in the task; here the body is read first and an
oversized or in-use disk gets 500. The byte count is kept (XapiSimulator.imported_bytes).
On a thin SR (storage.py) the disk then holds what was written: its
physical_utilisation becomes the byte count, and an upload the SR has no room for
fails its task with SR_BACKEND_FAILURE_44 (real: the write fails part way; modelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qs

from .engine import Engine
from .errors import XapiError, sr_no_space
from .sm import is_thin
from .storage import attached_vbds, refresh_sr, sr_free
from .tasks import complete_task, create_task, fail_task


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


def _find_vdi(engine: Engine, value: str) -> str | None:
    store = engine.store
    if store.exists("VDI", value):
        return value
    return next((r for r, v in store.all("VDI").items() if v["uuid"] == value), None)


def check_request(
    engine: Engine, query_text: str, headers: dict[str, str]
) -> tuple[Reply | None, str, str]:
    """Validate before reading the body: (error reply or None, vdi ref, session ref)."""
    query = {k: v[0] for k, v in parse_qs(query_text).items()}
    session = query.get("session_id", "")
    with engine.store.lock:
        if not engine.store.exists("session", session):
            return Reply(401), "", ""
        if "vdi" not in query:
            return Reply(400), "", session
        vdi = _find_vdi(engine, query["vdi"])
        if vdi is None:
            return Reply(500), "", session
    fmt = query.get("format", "raw")
    if fmt in ("tar", "qcow2"):
        return Reply(400), vdi, session
    if fmt not in ("raw", "vhd"):
        return Reply(404), vdi, session
    if "transfer-encoding" in headers:
        return Reply(404), vdi, session
    if "content-length" not in headers:
        return Reply(411), vdi, session
    return None, vdi, session


def store_upload(engine: Engine, vdi: str, session: str, size: int) -> Reply:
    """Record the upload of `size` bytes into `vdi` as a finished VDI-import task."""
    store = engine.store
    with store.lock:
        task = create_task(engine, session, "VDI import")
        headers = {"task-id": task}
        if not store.exists("VDI", vdi):
            fail_task(engine, task, XapiError("HANDLE_INVALID", "VDI", vdi))
            return Reply(500, headers)
        if attached_vbds(store, vdi):
            fail_task(engine, task, XapiError("VDI_IN_USE", vdi, "import"))
            return Reply(500, headers)
        if size > store.get("VDI", vdi)["virtual_size"]:
            fail_task(engine, task, XapiError("INTERNAL_ERROR", "image larger than the VDI"))
            return Reply(500, headers)
        record = store.get("VDI", vdi)
        if is_thin(store, record["SR"]):
            if size - record["physical_utilisation"] > sr_free(store, record["SR"]):
                fail_task(engine, task, sr_no_space())
                return Reply(500, headers)
            store.update("VDI", vdi, physical_utilisation=size)
            refresh_sr(store, record["SR"])
        engine.imported_bytes[vdi] = size
        store.touch("VDI", vdi)
        complete_task(engine, task, vdi)
        return Reply(200, headers)
