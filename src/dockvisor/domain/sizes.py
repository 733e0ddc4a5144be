"""Sizes of memory and disks: parsing what people type, printing what they read.

`512MiB`, `1GiB`, `1.5G`, `2g` and `1536M` are binary (powers of 1024), the way QEMU,
libvirt and the docker CLI read them; `1GB` and `500MB` are decimal (SI). A bare number
is refused: `--memory 1024` could mean bytes, KiB or MiB depending on the tool.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from dockvisor.errors import InvalidInput

__all__ = ["KiB", "MiB", "GiB", "TiB", "format_size", "parse_size"]

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4

_UNITS = {
    "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*$")


def parse_size(text: str, *, what: str = "size") -> int:
    """The number of bytes `text` names, e.g. parse_size("1.5G") == 1610612736.

    Raises InvalidInput with a one-line explanation when `text` is not a size.
    """
    match = _SIZE.match(text)
    if not match:
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", text):
            raise InvalidInput(f"{what} {text!r} needs a unit, for example {text.strip()}MiB")
        raise InvalidInput(f"{what} {text!r} is not a size (examples: 512MiB, 1GiB, 1.5G)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise InvalidInput(f"{what} {text!r} has an unknown unit {unit!r} (use MiB, GiB, M, G...)")
    try:
        value = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise InvalidInput(f"{what} {text!r} is not a size") from exc
    if value != value.to_integral_value():
        raise InvalidInput(f"{what} {text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    """A binary size for reading: exact where it can be short (1073741824 -> "1GiB",
    1610612736 -> "1.5GiB"), else rounded to one decimal (25276502016 -> "23.5GiB")."""
    units = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))
    for i, (unit, factor) in enumerate(units):
        if size >= factor:
            value = Decimal(size) / factor
            if value * 100 == (value * 100).to_integral_value():
                return f"{value.normalize():f}{unit}"
            rounded = round(value, 1)
            if rounded >= 1024 and i > 0:  # 1023.99MiB rounds to 1024.0: say 1.0GiB
                return f"{rounded / 1024:.1f}{units[i - 1][0]}"
            return f"{rounded:.1f}{unit}"
    return f"{size}B"
