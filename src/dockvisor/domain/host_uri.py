"""Which hypervisor URIs may be added as hosts. Pure: no I/O.

A libvirt URI is more than an address: its transport and its parameters decide what
the server process runs and opens. `qemu+ext:///system?command=/path` runs a program
(as the server's user, root here); `?command=`, `?netcat=` and `?socket=` choose
programs and sockets for the ssh and unix transports; `?keyfile=` and `?pkipath=` open
files; `test:///PATH` parses any file as XML and echoes it in its errors. So a host is
added only with the URI shapes dockvisor supports, each written out below, and none of
them takes a parameter:

    qemu:///system  qemu:///session  xen:///system          the local hypervisor
    qemu+unix:///system                                     the same, said explicitly
    qemu+ssh://[USER@]HOST[:PORT]/system   (xen+ssh too)     ssh, with the server's keys
    qemu+tls://HOST[:PORT]/system          (xen+tls too)     TLS, libvirt's own PKI
    test:///default                                         libvirt's in-process test host
    xapi://HOST[:PORT]  https://HOST[:PORT]                 a XenServer / XCP-ng pool (XAPI
                                                            over HTTPS); its user and password
                                                            are given apart, never in the URI

`test:///FILE` (a test host described by an XML file) is accepted only for a file inside
a directory the server was started with for that purpose (tests), never by default.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from dockvisor.errors import InvalidInput

__all__ = ["SUPPORTED", "check_host_uri"]

SUPPORTED = (
    "qemu:///system, qemu:///session, xen:///system, qemu+ssh://[USER@]HOST[:PORT]/system, "
    "qemu+tls://HOST[:PORT]/system (xen+ssh and xen+tls alike), test:///default, "
    "xapi://HOST[:PORT] or https://HOST[:PORT] (a XAPI pool)"
)

_LOCAL_PATHS = {"qemu": ("/system", "/session"), "xen": ("/system",)}
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])$")


def _refuse(uri: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"host URI {uri!r} is not one dockvisor adds: {why} (supported: {SUPPORTED})"
    )


def check_host_uri(uri: str, *, test_files: PurePosixPath | None = None) -> str:
    """`uri` if it is one of the supported shapes; InvalidInput saying why not.

    `test_files`: the only directory whose files may back a `test:///FILE` host."""
    if any(ord(c) < 0x21 or c == "\x7f" for c in uri):
        raise _refuse(uri, "it contains spaces or control characters")
    parts = urlsplit(uri)
    if parts.query or parts.fragment or "?" in uri or "#" in uri:
        raise _refuse(uri, "URI parameters are not accepted (they choose programs and files)")
    scheme, _, transport = parts.scheme.partition("+")
    if scheme == "test":
        return _check_test(uri, parts.netloc, parts.path, transport, test_files)
    if scheme in ("xapi", "https"):
        if transport:
            raise _refuse(uri, "a XAPI pool is reached over HTTPS, without a transport")
        if "@" in parts.netloc:
            raise _refuse(uri, "give the pool's user and password apart, not in the URI")
        if parts.path not in ("", "/"):
            raise _refuse(uri, "a XAPI pool URI has no path")
        _check_remote(uri, parts.netloc, "https")
        return uri
    if scheme not in _LOCAL_PATHS:
        raise _refuse(uri, f"unknown hypervisor {scheme or '(none)'!r}")
    if parts.path not in _LOCAL_PATHS[scheme]:
        raise _refuse(uri, f"the path must be {' or '.join(_LOCAL_PATHS[scheme])}")
    if transport in ("", "unix"):
        if parts.netloc:
            raise _refuse(uri, "a remote host needs the ssh or tls transport")
        return uri
    if transport not in ("ssh", "tls"):
        raise _refuse(uri, f"the {transport!r} transport is not supported (use ssh or tls)")
    _check_remote(uri, parts.netloc, transport)
    return uri


def _check_remote(uri: str, netloc: str, transport: str) -> None:
    user, at, hostport = netloc.rpartition("@")
    if at and (transport != "ssh" or not _NAME.match(user)):
        raise _refuse(uri, "a user name is for ssh only, letters, digits, '.', '_', '-'")
    host, port = hostport, ""
    if not hostport.endswith("]") and ":" in hostport:  # HOST:PORT or [ADDRESS]:PORT
        host, _, port = hostport.rpartition(":")
    if not host or not _HOST.match(host):
        raise _refuse(uri, "the host must be a DNS name or an address")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _refuse(uri, "the port must be a number from 1 to 65535")


def _check_test(
    uri: str, netloc: str, path: str, transport: str, test_files: PurePosixPath | None
) -> str:
    if transport or netloc:
        raise _refuse(uri, "the test hypervisor is local and takes no transport")
    if path == "/default":
        return uri
    if test_files is None:
        raise _refuse(uri, "test hosts backed by a file are for the test suite only")
    file = PurePosixPath(path)
    if ".." in file.parts or not file.is_absolute() or file.parent != test_files:
        raise _refuse(uri, f"a test host file must be directly in {test_files}")
    return uri
