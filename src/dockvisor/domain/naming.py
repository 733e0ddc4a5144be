"""What a VM, template or snapshot may be called.

A VM's name is also its guest's hostname (and later part of its TLS certificate), so it
is a DNS label: lower-case letters, digits and inner hyphens, 1 to 63 characters.
Snapshot names are freer but stay safe in a shell and in URLs.
"""

from __future__ import annotations

import re
import secrets

from dockvisor.errors import InvalidInput

__all__ = ["validate_snapshot_name", "validate_template_name", "validate_vm_name"]

_DNS_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_SNAPSHOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


_ID_SHAPED = re.compile(r"[0-9a-f]{8}-(?:[0-9a-f]{4}-){3}[0-9a-f]{12}")


def validate_vm_name(name: str, *, what: str = "VM name") -> str:
    """Return `name` if it is a valid VM name, else raise InvalidInput saying why."""
    if not _DNS_LABEL.fullmatch(name):
        raise InvalidInput(
            f"{what} {name!r} is not valid: use 1-63 lower-case letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    if _ID_SHAPED.fullmatch(name):
        raise InvalidInput(
            f"{what} {name!r} is shaped like a VM id (a UUID): choose another, it would "
            "be taken for one"
        )
    return name


def validate_template_name(name: str) -> str:
    return validate_vm_name(name, what="template name")


def validate_snapshot_name(name: str) -> str:
    if not _SNAPSHOT.fullmatch(name):
        raise InvalidInput(
            f"snapshot name {name!r} is not valid: use 1-64 letters, digits, '.', '_' "
            "and '-', starting with a letter or digit"
        )
    return name


SPARE_PREFIX = "spare."  # never a VM name: VM names are DNS labels, without dots


def new_spare_name() -> str:
    """A name for a warm spare, which no VM can have."""
    return SPARE_PREFIX + secrets.token_hex(4)
