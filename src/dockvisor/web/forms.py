"""Reading what a form was typed with: each value parsed or its error noted beside its
field (`errors[field]`), and a service's refusal placed beside the field it is about."""

from __future__ import annotations

from collections.abc import Mapping

from dockvisor.api.problems import status_of
from dockvisor.domain.sizes import parse_size
from dockvisor.errors import DockvisorError, InvalidInput

__all__ = ["field_of", "size_field", "status_for", "whole_number"]


def whole_number(
    text: str, field: str, errors: dict[str, str], what: str, *, low: int = 1, high: int = 1024
) -> int | None:
    """`text` as a whole number from `low` to `high`; None if empty (or wrong: then
    `errors[field]` says why)."""
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not low <= int(text) <= high:
        errors[field] = f"{what} is a whole number from {low} to {high}, not {text!r}"
        return None
    return int(text)


def size_field(text: str, field: str, errors: dict[str, str], what: str) -> int | None:
    """`text` as a size in bytes (512MiB, 1GiB); None if empty (or wrong, noted)."""
    text = text.strip()
    if not text:
        return None
    try:
        return parse_size(text, what=what)
    except InvalidInput as exc:
        errors[field] = str(exc)
        return None


def field_of(message: str, words: Mapping[str, tuple[str, ...]], default: str = "form") -> str:
    """The field a service's message is about (the first whose words it names), or
    `default` (the form as a whole)."""
    lowered = message.lower()
    for field, keys in words.items():
        if any(k in lowered for k in keys):
            return field
    return default


def status_for(exc: DockvisorError) -> int:
    """A refusal's status; a value the service finds wrong is bad input (422)."""
    return 422 if isinstance(exc, InvalidInput) else status_of(exc)
