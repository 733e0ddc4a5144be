"""Sessions: login, logout, validity.

Source: ocaml/xapi/xapi_session.ml login_with_password (a wrong password sleeps 5 s
in real xapi, then SESSION_AUTHENTICATION_FAILED [uname; msg]; the PAM message is
"Authentication failure"; the delay here is `auth_failure_delay`, default 0 to keep
tests fast) and ocaml/xapi/session_check.ml (unknown session: SESSION_INVALID [ref]).
A member answers every call, login included, with HOST_IS_SLAVE [master address]
(xapi_session.ml login on a slave; session_check.ml for other calls); see dispatch.py.
"""

from __future__ import annotations

import time
from typing import Any

from .engine import Call, Engine
from .errors import XapiError
from .registry import api
from .wire import NULL_REF, now


def check_session(engine: Engine, ref: str) -> None:
    if not engine.store.exists("session", ref):
        raise XapiError("SESSION_INVALID", ref)


@api(
    "session.login_with_password",
    "s",
    "s",
    optional=(("version", "1.0"), ("originator", "")),
    session=False,
    async_ok=False,
)
def login_with_password(call: Call, uname: str, pwd: str, *rest: Any) -> str:
    engine = call.engine
    if engine.config.users.get(uname) != pwd or uname not in engine.config.users:
        engine.store.lock.release()
        try:
            time.sleep(engine.config.auth_failure_delay)
        finally:
            engine.store.lock.acquire()
        raise XapiError("SESSION_AUTHENTICATION_FAILED", uname, "Authentication failure")
    originator = rest[1] if len(rest) > 1 and isinstance(rest[1], str) else ""
    return engine.store.create(
        "session",
        {
            "this_host": engine.master,
            "this_user": NULL_REF,
            "last_active": now(),
            "validation_time": now(),
            "is_local_superuser": True,
            "auth_user_name": uname,
            "originator": originator,
        },
    )


@api("session.logout", async_ok=False)
def logout(call: Call) -> None:
    call.store.destroy("session", call.session)


def expire_all(engine: Engine) -> None:
    for ref in list(engine.store.all("session")):
        engine.store.destroy("session", ref)
