from dockvisor.guest.debian import DebianPackage, _parse_depends


def test_depends_are_groups_of_alternatives_without_versions():
    assert _parse_depends("libc6 (>= 2.34), libsystemd0 | libelogind0, adduser") == (
        ("libc6",),
        ("libsystemd0", "libelogind0"),
        ("adduser",),
    )


def test_depends_drop_architecture_qualifiers_and_empty_parts():
    assert _parse_depends("python3:any (>= 3.9~), , libfoo1:amd64 | bar") == (
        ("python3",),
        ("libfoo1", "bar"),
    )
    assert _parse_depends("") == ()


def test_filename_is_what_apt_get_download_writes():
    assert DebianPackage("busybox", "1:1.35.0-4", "amd64").filename == (
        "busybox_1%3a1.35.0-4_amd64.deb"
    )
    assert DebianPackage("libc6", "2.36-9+deb12u4", "amd64").filename == (
        "libc6_2.36-9+deb12u4_amd64.deb"
    )
