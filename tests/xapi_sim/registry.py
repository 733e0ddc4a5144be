"""The table of XAPI methods the simulator serves, and parameter decoding.

Wire names: ocaml/idl/datamodel_utils.ml accepts both "Class.method" and
"Class_method" (hence "event_from"); server_helpers.ml strips "Async.".
Arity: ocaml/idl/ocaml_backend/gen_server.ml answers MESSAGE_PARAMETER_COUNT_MISMATCH
[method; expected; received] (counts exclude the session; parameters with defaults
are not counted as expected and any number of them is accepted). Constructor
records: a missing field without a default raises Dispatcher_FieldNotFound, an
INTERNAL_ERROR (server_helpers.ml my_assoc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import XapiError
from .schema import ENUMS
from .wire import (
    parse_bool,
    parse_enum,
    parse_float,
    parse_int,
    parse_map,
    parse_set,
    parse_str,
)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: tuple[str, ...]
    handler: Callable[..., Any]
    optional: tuple[tuple[str, Any], ...] = ()
    session: bool = True
    async_ok: bool = True


REGISTRY: dict[str, MethodSpec] = {}


def api(
    name: str,
    *params: str,
    optional: tuple[tuple[str, Any], ...] = (),
    session: bool = True,
    async_ok: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a handler `fn(call, *args)` for a wire method."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        REGISTRY[name] = MethodSpec(name, params, fn, optional, session, async_ok)
        return fn

    return register


def lookup(wire_name: str) -> tuple[MethodSpec | None, bool]:
    """(spec, is_async) for a wire name, accepting the "Class_method" alternative."""
    is_async = wire_name.startswith("Async.")
    name = wire_name[len("Async.") :] if is_async else wire_name
    spec = REGISTRY.get(name)
    if spec is None:
        for candidate in REGISTRY.values():
            cls, _, method = candidate.name.partition(".")
            if f"{cls}_{method}" == name:
                spec = candidate
                break
    return spec, is_async


def parse_value(kind: str, value: Any) -> Any:
    """Decode one parameter of the given kind (see schema.py for the kind codes)."""
    if kind in ("s", "r"):
        return parse_str(value)
    if kind == "i":
        return parse_int(value)
    if kind == "f":
        return parse_float(value)
    if kind == "b":
        return parse_bool(value)
    if kind == "m":
        return parse_map(value)
    if kind == "ss":
        return parse_set(value)
    if kind == "any":
        return value
    if kind.startswith("e:"):
        name = kind[2:]
        return parse_enum(value, ENUMS[name], name)
    if kind == "d":
        return value
    if kind.startswith("rec:"):
        return parse_record(value, CTORS[kind[4:]])
    raise ValueError(kind)


@dataclass(frozen=True)
class Ctor:
    """A constructor record: field -> (kind, default or REQUIRED)."""

    fields: dict[str, tuple[str, Any]]


REQUIRED = object()
CTORS: dict[str, Ctor] = {}


def parse_record(value: Any, ctor: Ctor) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise XapiError("INTERNAL_ERROR", 'Failure("bad __structure")')
    out: dict[str, Any] = {}
    for field, (kind, default) in ctor.fields.items():
        if field in value:
            out[field] = parse_value(kind, value[field])
        elif default is REQUIRED:
            raise XapiError("INTERNAL_ERROR", f'Server_helpers.Dispatcher_FieldNotFound("{field}")')
        else:
            out[field] = default() if callable(default) else default
    return out
