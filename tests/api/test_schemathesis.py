"""Schemathesis over the server's own OpenAPI description (GET /api/v1/openapi.json), as
an administrator, on a live SQLite server: for every operation, requests that fit the
description and requests that do not; no answer may be a 5xx, and every answer must be
one the description documents (status code, content type and body).

Left out: GET /api/v1/events, an endless server-sent event stream (a request to it does
not end, so there is no response to check).

Kept in, though they can take the administrator's own access away: DELETE /tokens/{id}
(revoking the token these requests carry) and DELETE /acl/{id} (revoking the Admin entry
on /). Generated ids hit them sooner or later; rather than leave the operations out,
`keep_admin` restores that token and that entry in the store after each call, so the
rest of the run is still made as an administrator.

schemathesis's pytest integration (`schemathesis.pytest.from_fixture`) does not run
under pytest 9.2 (it reads `Function._nodeid`, which pytest no longer has), so this
drives its Python API: one Hypothesis test per operation and generation mode, each a
subtest, so that one failing operation does not hide the others.
"""

from __future__ import annotations

import time

import hypothesis
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import select

from dockvisor.store.models import AclEntryRow, TokenRow
from tests.api.conftest import Server

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXCLUDED = {("GET", "/api/v1/events")}
MAX_EXAMPLES = 25
SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
)


def keep_admin(server: Server) -> None:
    """Undo what a generated request did to the administrator's own access, if anything."""
    admin_id = server.user_ids["admin"]
    with server.cp.db.session() as session:
        for token in session.scalars(select(TokenRow).where(TokenRow.user_id == admin_id)):
            token.revoked = False
        entry = session.scalar(
            select(AclEntryRow).where(
                AclEntryRow.subject_kind == "user",
                AclEntryRow.subject_id == admin_id,
                AclEntryRow.path == "/",
                AclEntryRow.role == "Admin",
            )
        )
        if entry is None:
            session.add(
                AclEntryRow(
                    subject_kind="user", subject_id=admin_id, path="/", role="Admin",
                    propagate=True,
                )  # fmt: skip
            )
    server.cp.access.invalidate()


def test_every_answer_is_documented_and_none_is_a_server_error(
    sqlite_server: Server, subtests: pytest.Subtests
) -> None:
    headers = {"Authorization": f"Bearer {sqlite_server.tokens['admin']}"}
    schema = schemathesis.openapi.from_url(f"{sqlite_server.url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    tested = [op for op in operations if (op.method.upper(), op.path) not in EXCLUDED]
    assert len(operations) - len(tested) == len(EXCLUDED)
    assert len(tested) >= 40  # the whole API, not an empty or truncated description
    calls = 0
    started = time.monotonic()

    for operation in tested:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @SETTINGS
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            def check(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                try:
                    case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
                finally:
                    keep_admin(sqlite_server)

            with subtests.test(operation=operation.label, mode=mode.value):
                check()

    # Cases were really sent (some operations' negative strategies can be empty).
    assert calls >= len(tested) * MAX_EXAMPLES // 2, calls
    print(f"schemathesis: {calls} requests to {len(tested)} operations "
          f"in {time.monotonic() - started:.0f} s")  # fmt: skip
