import gzip
import os
import subprocess

from dockvisor.guest.cpio import write_initramfs


def make_tree(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "busybox").write_bytes(b"\x7fELF pretend binary\x00\x01")
    (root / "bin" / "busybox").chmod(0o755)
    (root / "bin" / "sh").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("guest\n")
    (root / "init").write_text("#!/bin/sh\nexec /bin/sh\n")
    (root / "empty").mkdir()
    return root


def cpio(archive, *args, cwd=None):
    """Run the system cpio on the decompressed archive; its stdout as text."""
    return subprocess.run(
        ["cpio", "--quiet", *args],
        input=gzip.decompress(archive.read_bytes()),
        cwd=cwd,
        check=True,
        capture_output=True,
    ).stdout.decode()


def test_cpio_unpacks_the_same_tree(tmp_path):
    write_initramfs(make_tree(tmp_path / "tree"), tmp_path / "initrd.img")
    out = tmp_path / "out"
    out.mkdir()
    cpio(tmp_path / "initrd.img", "-idm", "--no-absolute-filenames", cwd=out)

    assert (out / "bin" / "busybox").read_bytes() == b"\x7fELF pretend binary\x00\x01"
    assert os.access(out / "bin" / "busybox", os.X_OK)
    assert os.readlink(out / "bin" / "sh") == "busybox"
    assert (out / "etc" / "hostname").read_text() == "guest\n"
    assert (out / "init").read_text() == "#!/bin/sh\nexec /bin/sh\n"
    assert (out / "empty").is_dir()


def test_cpio_lists_every_entry_once_in_order(tmp_path):
    write_initramfs(make_tree(tmp_path / "tree"), tmp_path / "initrd.img")
    assert cpio(tmp_path / "initrd.img", "-t").split() == [
        "bin", "bin/busybox", "bin/sh", "empty", "etc", "etc/hostname", "init",
    ]  # fmt: skip


def test_entries_are_owned_by_root(tmp_path):
    write_initramfs(make_tree(tmp_path / "tree"), tmp_path / "initrd.img")
    for line in cpio(tmp_path / "initrd.img", "-tv", "--numeric-uid-gid").splitlines():
        uid, gid = line.split()[2:4]
        assert (uid, gid) == ("0", "0"), line


def test_same_tree_gives_same_bytes(tmp_path):
    tree = make_tree(tmp_path / "tree")
    write_initramfs(tree, tmp_path / "a.img")
    os.utime(tree / "init", (0, 1_000_000))  # a newer mtime must not change the image
    write_initramfs(tree, tmp_path / "b.img")
    assert (tmp_path / "a.img").read_bytes() == (tmp_path / "b.img").read_bytes()
