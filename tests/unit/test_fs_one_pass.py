"""cgctl/cgroup/fs.py: path checks, and the one-apply scope (``one_pass``) that checks each
directory once (docs/performance.md, section 3 E). Plain directories under tmp_path stand in for
a cgroup mount: the checks are about paths, not the kernel."""

from __future__ import annotations

import os
import threading

import pytest

from cgctl.cgroup import fs
from cgctl.errors import UnsafePath


@pytest.fixture
def mount(tmp_path):
    for d in ("a/b", "c"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "a/b/memory.limit_in_bytes").write_text("1\n")
    return str(tmp_path)


def _swap_for_symlink(mount, rel, target):
    os.rename(os.path.join(mount, rel), os.path.join(mount, rel + ".moved"))
    os.symlink(target, os.path.join(mount, rel))


def test_outside_a_scope_every_check_walks_the_path(mount, tmp_path):
    path = os.path.join(mount, "a/b/memory.limit_in_bytes")
    assert fs.check_beneath(mount, path) == path
    _swap_for_symlink(mount, "a", str(tmp_path / "c"))
    with pytest.raises(UnsafePath, match="symlink"):
        fs.check_beneath(mount, path)


def test_a_scope_checks_each_directory_once_and_forgets_it_after(mount, tmp_path, monkeypatch):
    path = os.path.join(mount, "a/b/memory.limit_in_bytes")
    calls = []
    real = os.lstat
    monkeypatch.setattr(os, "lstat", lambda p: calls.append(p) or real(p))
    with fs.one_pass():
        fs.check_beneath(mount, path)
        fs.check_beneath(mount, os.path.join(mount, "a/b/cpu.shares"))  # same directories
        with fs.one_pass():  # nested: the outer scope's answers
            fs.check_beneath(mount, path)
    assert calls.count(os.path.join(mount, "a")) == 1
    assert calls.count(os.path.join(mount, "a/b")) == 1
    _swap_for_symlink(mount, "a", str(tmp_path / "c"))
    with pytest.raises(UnsafePath, match="symlink"):  # a new scope walks again
        with fs.one_pass():
            fs.check_beneath(mount, path)


def test_a_scope_still_refuses_a_symlink_it_has_not_checked(mount, tmp_path):
    os.symlink(str(tmp_path / "a"), os.path.join(mount, "link"))
    with fs.one_pass():
        fs.check_beneath(mount, os.path.join(mount, "a/b/memory.limit_in_bytes"))
        with pytest.raises(UnsafePath, match="symlink"):
            fs.check_beneath(mount, os.path.join(mount, "link/b/memory.limit_in_bytes"))
        with pytest.raises(UnsafePath, match="outside"):
            fs.check_beneath(mount, os.path.join(mount, "../etc/passwd"))


def test_a_scope_is_one_threads(mount, tmp_path):
    """The service's worker applies in a scope; another thread's checks are its own."""
    path = os.path.join(mount, "a/b/memory.limit_in_bytes")
    with fs.one_pass():
        fs.check_beneath(mount, path)
        _swap_for_symlink(mount, "a", str(tmp_path / "c"))
        got = []

        def other():
            try:
                fs.check_beneath(mount, path)
                got.append("passed")
            except UnsafePath:
                got.append("refused")
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert got == ["refused"]


def test_exists_and_subdirs_are_answered_once_in_a_scope(mount):
    with fs.one_pass():
        assert fs.subdirs(mount) == ["a", "c"]
        assert not fs.exists(os.path.join(mount, "x"))
        os.mkdir(os.path.join(mount, "x"))
        assert fs.subdirs(mount) == ["a", "c"] and not fs.exists(os.path.join(mount, "x"))
    assert fs.subdirs(mount) == ["a", "c", "x"] and fs.exists(os.path.join(mount, "x"))


def test_the_root_as_mount_point(tmp_path):
    """A mount point of "/" (a container's cgroupfs view): paths below it pass."""
    assert fs.check_beneath("/", str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("size", [0, 5, 65535, 65536, 200_000])
def test_read_returns_the_whole_file(tmp_path, size):
    p = tmp_path / "f"
    p.write_bytes(b"x" * size)
    assert fs.read(str(p)) == "x" * size
