"""What a route requires of its caller, declared once beside the route. Pure: no I/O.

Each API route carries one `Requirement` (as Proxmox's API methods carry
`check => ['perm', '/vms/{vmid}', ['VM.Snapshot']]`). The same declaration is

- published in the route's OpenAPI operation as `x-dockvisor-privilege`,
- read back from there and enforced by the API before the route's handler runs, before
  a byte of the request body is read (services/guard.py),
- and read by the tests to generate the route x role matrix.

The forms:

- `Public()`: anyone, signed in or not (the API's version, logging in).
- `AnyUser(note)`: any signed-in user; the service shows them only their own or what
  they may view, as `note` says.
- `Perm(path, *privileges)`: every privilege on the object `path` names (`/`,
  `/vms/{vm_id}`); with `any_of=True` one of them suffices. A VM the caller cannot view
  does not exist for them (404), as for an id that never was.
- `Somewhere(privilege)`: the privilege on at least one path (the request body names
  where; the service checks that exact place once it has read the body).

`note` says what the service checks beyond the declaration (a side effect that takes a
second privilege, as Proxmox's rollback with start takes VM.PowerMgmt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dockvisor.domain.privileges import Privilege, parse_privileges

__all__ = ["AnyUser", "Perm", "Public", "Requirement", "Somewhere", "from_openapi"]

EXTENSION = "x-dockvisor-privilege"
_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Requirement:
    check: str  # "public", "user", "perm" or "somewhere"
    path: str = ""
    privileges: frozenset[Privilege] = field(default_factory=frozenset)
    any_of: bool = False
    note: str = ""

    @property
    def signed_in(self) -> bool:
        return self.check != "public"

    def params(self) -> list[str]:
        """The path parameters the declaration's path names (`vm_id`)."""
        return _PARAM.findall(self.path)

    def object_path(self, params: dict[str, Any]) -> str:
        """The declared path with the request's path parameters filled in."""
        return _PARAM.sub(lambda m: str(params[m.group(1)]), self.path)

    def met_by(self, held: frozenset[Privilege]) -> bool:
        """Whether holding `held` on the declared path meets a perm declaration (all of
        its privileges, or one with `any_of`)."""
        if self.any_of:
            return bool(self.privileges & held)
        return self.privileges <= held

    def describe(self) -> str:
        """In words, for people: 'VM.Snapshot on /vms/{vm_id}'."""
        names = sorted(p.value for p in self.privileges)
        joined = (" or " if self.any_of else " and ").join(names)
        text = {
            "public": "none (public)",
            "user": "any signed-in user",
            "perm": f"{joined} on {self.path}",
            "somewhere": f"{joined} on some path (the request names which)",
        }[self.check]
        return f"{text}; {self.note}" if self.note else text

    def openapi(self) -> dict[str, Any]:
        document: dict[str, Any] = {"check": self.check, "description": self.describe()}
        if self.check in ("perm", "somewhere"):
            document["privileges"] = sorted(p.value for p in self.privileges)
            document["any_of"] = self.any_of
        if self.check == "perm":
            document["path"] = self.path
        if self.note:
            document["note"] = self.note
        return {EXTENSION: document}


def Public() -> Requirement:  # noqa: N802 - reads as a declaration beside the route
    return Requirement("public")


def AnyUser(note: str = "") -> Requirement:  # noqa: N802
    return Requirement("user", note=note)


def Perm(  # noqa: N802
    path: str, *privileges: Privilege, any_of: bool = False, note: str = ""
) -> Requirement:
    if not privileges or not path.startswith("/"):
        raise ValueError("Perm needs a path and at least one privilege")
    return Requirement("perm", path, frozenset(privileges), any_of, note)


def Somewhere(*privileges: Privilege, note: str = "") -> Requirement:  # noqa: N802
    if not privileges:
        raise ValueError("Somewhere needs at least one privilege")
    return Requirement("somewhere", "", frozenset(privileges), len(privileges) > 1, note)


def from_openapi(document: dict[str, Any]) -> Requirement:
    """The Requirement an operation publishes (the inverse of Requirement.openapi);
    ValueError if there is none or it is malformed: a route never runs undeclared."""
    declared = document.get(EXTENSION)
    if not isinstance(declared, dict) or declared.get("check") not in (
        "public",
        "user",
        "perm",
        "somewhere",
    ):
        raise ValueError(f"no valid {EXTENSION} declaration")
    privileges = parse_privileges(list(declared.get("privileges", [])))
    return Requirement(
        declared["check"],
        declared.get("path", ""),
        privileges,
        bool(declared.get("any_of", False)),
        declared.get("note", ""),
    )
