"""XAPI errors as the simulator raises them.

Codes and parameter lists follow ocaml/xapi-consts/api_errors.ml and
ocaml/idl/datamodel_errors.ml in xapi-project/xen-api; each raise site cites the
xapi function that raises the same error.
"""

from __future__ import annotations


class XapiError(Exception):
    """A XenAPI failure: becomes {"Status": "Failure", "ErrorDescription": [code, *params]}."""

    def __init__(self, code: str, *params: object) -> None:
        self.code = code
        self.params = [str(p) for p in params]
        super().__init__(self.details)

    @property
    def details(self) -> list[str]:
        return [self.code, *self.params]


def handle_invalid(cls: str, ref: str) -> XapiError:
    """HANDLE_INVALID [table, ref]: ocaml/xapi/exnHelper.ml maps DBCache_NotFound to it."""
    return XapiError("HANDLE_INVALID", cls, ref)


def internal_failure(message: str) -> XapiError:
    """INTERNAL_ERROR [Printexc.to_string (Failure msg)]: what an OCaml `failwith` becomes
    (ocaml/xapi/exnHelper.ml, catch-all branch)."""
    return XapiError("INTERNAL_ERROR", f'Failure("{message}")')


def bad_power_state(ref: str, expected: list[str], actual: str) -> XapiError:
    """VM_BAD_POWER_STATE [vm, expected (", "-joined, lowercase), actual (lowercase)]:
    report_power_state_error in ocaml/xapi/xapi_vm_lifecycle.ml."""
    return XapiError(
        "VM_BAD_POWER_STATE", ref, ", ".join(s.lower() for s in expected), actual.lower()
    )


def sr_no_space() -> XapiError:
    """Out of space on an SM-backed SR. SR_FULL [requested; maximum] is declared in
    datamodel_errors.ml but nothing in ocaml/xapi raises it; the SM driver raises
    SRNoSpace (code 44, "There is insufficient space", drivers/XE_SR_ERRORCODES.xml in
    xapi-project/sm) and ocaml/xapi/sm_exec.ml turns fault code 44 into
    SR_BACKEND_FAILURE_44 ["", reason, stderr]."""
    return XapiError("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "")
