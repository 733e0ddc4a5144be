"""Wire types: how values are encoded in responses and decoded from parameters.

Source: doc/content/xen-api/wire-protocol.md (int64 travels as a string) and
mirage/ocaml-rpc src/lib/rpc.ml + xmlrpc.ml, which xapi uses to (un)marshal:
`int64_of_rpc` accepts an XML-RPC <int>/<i4>/<i8> *or* a string parsed with
OCaml's Int64.of_string, so native ints are accepted too; a non-numeric string
raises Failure "Int64.of_string", which ocaml/xapi/exnHelper.ml turns into
INTERNAL_ERROR (not FIELD_TYPE_ERROR: nothing in the dispatcher raises that).
Responses: ocaml-rpc writes Rpc.Int as an untyped <value>N</value>, so every
int64 reaches an XML-RPC client as a string; DateTime is <dateTime.iso8601>.
"""

from __future__ import annotations

import re
import xmlrpc.client
from datetime import UTC, datetime
from typing import Any

from .errors import XapiError, internal_failure

NULL_REF = "OpaqueRef:NULL"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_OCAML_INT = re.compile(r"[+-]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def format_datetime(value: datetime) -> str:
    """XAPI's DateTime text form, e.g. 20240102T03:04:05Z (Clock.Date.to_rfc3339)."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H:%M:%SZ")


class Int32(int):
    """An int that stays an XML-RPC <int> (xapi's Rpc.Int32, e.g. valid_ref_counts)."""


def encode(value: Any) -> Any:
    """A stored value as XAPI puts it on the wire (int64 -> string, DateTime -> DateTime)."""
    if isinstance(value, Int32):
        return int(value)
    if isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return xmlrpc.client.DateTime(format_datetime(value))
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [encode(v) for v in value]
    if value is None:
        return ""
    return value


def rpc_repr(value: Any) -> str:
    """Rpc.to_string, used inside xapi's unmarshalling failure messages."""
    if isinstance(value, bool):
        return f"B({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"I({value})"
    if isinstance(value, float):
        return f"F({value:g})"
    if isinstance(value, str):
        return f"S({value})"
    if isinstance(value, xmlrpc.client.DateTime):
        return f"D({value.value})"
    if isinstance(value, list | tuple):
        return "[" + ";".join(rpc_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ";".join(f"{k}:{rpc_repr(v)}" for k, v in value.items()) + "}"
    return "N"


def _expected(kind: str, value: Any) -> XapiError:
    return internal_failure(f"Expected {kind}, got '{rpc_repr(value)}'")


def parse_int(value: Any) -> int:
    """Rpc.int64_of_rpc: <int> or a string accepted by OCaml's Int64.of_string."""
    if isinstance(value, bool):
        raise _expected("int64", value)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not _OCAML_INT.fullmatch(text):
            raise internal_failure("Int64.of_string")
        digits = text.replace("_", "")
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        bases = {"0x": 16, "0X": 16, "0o": 8, "0O": 8, "0b": 2, "0B": 2}
        base = bases.get(digits[:2], 10)
        number = sign * int(digits[2:] if base != 10 else digits, base)
    else:
        raise _expected("int64", value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise internal_failure("Int64.of_string")
    return number


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _expected("string", value)
    return value


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected("bool", value)
    return value


def parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _expected("float", value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise internal_failure("float_of_string") from None
    raise _expected("float", value)


def parse_map(value: Any) -> dict[str, str]:
    """(string -> string) map: an XML-RPC struct whose values are strings."""
    if not isinstance(value, dict):
        raise _expected("Dict", value)
    return {str(k): parse_str(v) for k, v in value.items()}


def parse_set(value: Any) -> list[str]:
    if not isinstance(value, list | tuple):
        raise _expected("Enum", value)
    return [parse_str(v) for v in value]


def parse_enum(value: Any, allowed: tuple[str, ...], type_name: str) -> str:
    """An enum value, matched case-insensitively as ocaml-rpc's lowerfn does; the exact
    text of the failure for an unknown value is not verified."""
    text = parse_str(value)
    for candidate in allowed:
        if candidate.lower() == text.lower():
            return candidate
    raise XapiError("INTERNAL_ERROR", f'Rpc.Runtime_error("{type_name}", {rpc_repr(value)})')
