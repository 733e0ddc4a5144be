"""Serving one XML-RPC call: name lookup, arity, types, session, then the handler.

The order of checks is that of the code ocaml/idl/ocaml_backend/gen_server.ml
generates: unknown method (MESSAGE_METHOD_UNKNOWN [name]), parameter count,
unmarshalling, session check, then server_helpers.ml do_dispatch (an Async call of
a method without an async mode fails with ["Fault"; "No async mode for this
operation (rpc: NAME)"], API.response_of_fault). Getters and setters the datamodel
generates for every field are built here from schema.py.
"""

from __future__ import annotations

from typing import Any

from .engine import Call, Engine
from .errors import XapiError
from .lifecycle import update_allowed_operations
from .registry import REGISTRY, MethodSpec, api, lookup, parse_value
from .schema import CLASSES, LISTABLE, WRITABLE
from .sessions import check_session
from .store import new_ref
from .tasks import Plan, create_task, fail_task, run_async, run_sync
from .wire import encode


def success(value: Any) -> dict[str, Any]:
    return {"Status": "Success", "Value": value}


def failure(details: list[str]) -> dict[str, Any]:
    return {"Status": "Failure", "ErrorDescription": details}


def _register_class(cls: str) -> None:
    fields = CLASSES[cls]

    def getter(field: str):
        return lambda call, ref: call.store.render(cls, ref)[field]

    def setter(field: str):
        def set_field(call: Call, ref: str, value: Any) -> None:
            call.store.get(cls, ref)
            call.store.update(cls, ref, **{field: value})
            if cls == "VM":
                update_allowed_operations(call.store, ref)

        return set_field

    def map_add(field: str):
        def add(call: Call, ref: str, key: str, value: str) -> None:
            current = dict(call.store.get(cls, ref)[field])
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", cls, field, ref, key)
            current[key] = value
            setter(field)(call, ref, current)

        return add

    def map_remove(field: str):
        def remove(call: Call, ref: str, key: str) -> None:
            current = dict(call.store.get(cls, ref)[field])
            current.pop(key, None)
            setter(field)(call, ref, current)

        return remove

    def set_add(field: str):
        def add(call: Call, ref: str, value: str) -> None:
            current = list(call.store.get(cls, ref)[field])
            if value not in current:
                current.append(value)
            setter(field)(call, ref, current)

        return add

    def set_remove(field: str):
        def remove(call: Call, ref: str, value: str) -> None:
            current = [v for v in call.store.get(cls, ref)[field] if v != value]
            setter(field)(call, ref, current)

        return remove

    def plain(name: str, *params: str):
        return api(name, *params, async_ok=False) if name not in REGISTRY else (lambda f: f)

    if cls in LISTABLE:
        plain(f"{cls}.get_all")(lambda call: list(call.store.all(cls)))
        plain(f"{cls}.get_all_records")(
            lambda call: {r: call.store.render(cls, r) for r in list(call.store.all(cls))}
        )
    plain(f"{cls}.get_record", "r")(lambda call, ref: call.store.render(cls, ref))
    plain(f"{cls}.get_by_uuid", "s")(lambda call, value: call.store.by_uuid(cls, value))
    if "name_label" in fields:
        plain(f"{cls}.get_by_name_label", "s")(
            lambda call, label: [
                r for r, rec in call.store.all(cls).items() if rec["name_label"] == label
            ]
        )
    for field, kind in fields.items():
        plain(f"{cls}.get_{field}", "r")(getter(field))
        if field not in WRITABLE.get(cls, set()):
            continue
        plain(f"{cls}.set_{field}", "r", kind)(setter(field))
        if kind == "m":
            plain(f"{cls}.add_to_{field}", "r", "s", "s")(map_add(field))
            plain(f"{cls}.remove_from_{field}", "r", "s")(map_remove(field))
        elif kind == "ss":
            plain(f"{cls}.add_{field}", "r", "s")(set_add(field))
            plain(f"{cls}.remove_{field}", "r", "s")(set_remove(field))


def register_generic() -> None:
    for cls in CLASSES:
        _register_class(cls)


class Dispatcher:
    def __init__(self, engine: Engine, master_address: str) -> None:
        self.engine = engine
        self.master_address = master_address

    def handle(self, method: str, params: tuple[Any, ...], member: bool) -> dict[str, Any]:
        try:
            return success(self._handle(method, params, member))
        except XapiError as error:
            return failure(error.details)
        except Exception as error:  # a simulator bug: report it like xapi would
            return failure(["INTERNAL_ERROR", repr(error)])

    def _record(self, spec: MethodSpec | None, method: str, params: tuple[Any, ...]) -> None:
        with_session = spec.session if spec else bool(params)
        self.engine.calls.append((method, tuple(params[1:] if with_session else params)))

    def _handle(self, method: str, params: tuple[Any, ...], member: bool) -> Any:
        engine = self.engine
        spec, is_async = lookup(method)
        self._record(spec, method, params)
        if member:
            raise XapiError("HOST_IS_SLAVE", self.master_address)
        if spec is None:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", method)
        given = len(params) - (1 if spec.session else 0)
        expected = len(spec.params)
        if given < expected or (given > expected and not spec.optional):
            raise XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, expected, given)
        session = ""
        rest = list(params)
        if spec.session:
            session = parse_value("s", rest.pop(0))
        args = [parse_value(kind, value) for kind, value in zip(spec.params, rest, strict=False)]
        args += rest[expected:]
        with engine.store.lock:
            if spec.session:
                check_session(engine, session)
        if is_async and not spec.async_ok:
            raise XapiError("Fault", f"No async mode for this operation (rpc: {method})")
        injected = engine.fail_next.pop(spec.name, None)
        if is_async:
            return self._run_async(spec, session, args, injected)
        call = Call(engine, session, new_ref(), None, spec.name)
        with engine.store.lock:
            if injected is not None:
                raise XapiError(*injected)
            result = spec.handler(call, *args)
        if isinstance(result, Plan):
            result = run_sync(engine, call, result)
        return "" if result is None else encode(result)

    def _run_async(
        self, spec: MethodSpec, session: str, args: list[Any], injected: list[str] | None
    ) -> str:
        engine = self.engine
        with engine.store.lock:
            task = create_task(engine, session, f"Async.{spec.name}")
            call = Call(engine, session, task, task, spec.name)
            try:
                if injected is not None:
                    raise XapiError(*injected)
                result = spec.handler(call, *args)
            except XapiError as error:
                fail_task(engine, task, error)
                return task
            plan = result if isinstance(result, Plan) else Plan(lambda: result, timed=False)
            run_async(engine, call, plan)
            return task
