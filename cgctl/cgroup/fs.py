"""The only code that opens cgroup files.

Every path is checked to stay under a cgroup mount point, to go through no
symlink, and every write is one ``write(2)`` so the kernel sees one value.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from typing import Iterable

from cgctl.errors import UnsafePath

# What a guest's machine group may be called (docs/design.md#finding-a-guests-cgroups): libvirt's own
# layout without systemd, and machined's scopes with systemd.
MACHINE_GROUP_RE = re.compile(
    r"^(?:(?:qemu|lxc)-\d+-.+\.libvirt-(?:qemu|lxc)"
    r"|lxc-\d+-.+\.libvirt-lxc"
    r"|machine-(?:qemu|lxc)\\x2d.+\.scope"
    r"|machine-.+\.scope)$"
)


class _Scope(threading.local):
    checked = None  # set of directories verified in this scope, or None outside one
    found = None    # path -> exists / [subdirs], answered once in this scope


_scope = _Scope()


@contextlib.contextmanager
def one_pass():
    """One apply's view of a guest's cgroup tree (docs/performance.md, section 3 E).

    Inside (per thread; nested scopes share the outer one): a directory that
    ``check_beneath`` has walked and found free of symlinks is not walked again, and
    ``exists``/``subdirs`` answer each path once. An apply checked every directory on the way
    to each of ~20 files, ~4 ``lstat`` each; now once per directory. Never for file contents:
    every ``read`` reads the kernel. The scope is one guest's apply, under its lock; the open
    itself still refuses a symlink (O_NOFOLLOW), as before."""
    if _scope.checked is not None:
        yield
        return
    _scope.checked, _scope.found = set(), {}
    try:
        yield
    finally:
        _scope.checked = _scope.found = None


def check_beneath(mountpoint: str, path: str) -> str:
    """Return ``path`` normalised, after checking it stays under ``mountpoint``
    and that no component on the way is a symlink."""
    found = _scope.found
    if found is not None:
        key = ("c", mountpoint, path)
        if key in found:
            return found[key]
    norm = _check_beneath(mountpoint, path)
    if found is not None:
        found[key] = norm
    return norm


def _check_beneath(mountpoint: str, path: str) -> str:
    mount = os.path.normpath(mountpoint)
    norm = os.path.normpath(path)
    if norm == mount:
        return norm
    prefix = mount if mount.endswith(os.sep) else mount + os.sep
    if not norm.startswith(prefix):
        raise UnsafePath(f"{path} is outside the cgroup mount {mountpoint}", path=path)
    parts = norm[len(prefix):].split(os.sep)
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"{path} has a {part!r} component", path=path)
    checked = _scope.checked
    cur = mount
    for part in parts:
        cur = os.path.join(cur, part)
        if checked is not None and cur in checked:
            continue
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break  # the caller's open reports it
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{cur} is a symlink; cgctl never follows links in cgroup paths",
                             path=path)
        if checked is not None and stat.S_ISDIR(st.st_mode):
            checked.add(cur)
    return norm


def looks_like_machine_group(dirname: str) -> bool:
    return bool(MACHINE_GROUP_RE.match(os.path.basename(os.path.normpath(dirname))))


_READ_SIZE = 65536


def read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        b = os.read(fd, _READ_SIZE)
        if len(b) < _READ_SIZE:  # the whole file in one read(2): a short read is its end
            return b.decode("utf-8", "replace")
        chunks = [b]
        while b:
            b = os.read(fd, _READ_SIZE)
            chunks.append(b)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


def write(path: str, data: str) -> None:
    """One write(2) of ``data``; raises the kernel's OSError unchanged.

    O_TRUNC is what a shell's ``echo >`` does too; cgroupfs ignores it, plain
    files (tests' fake trees) need it."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        payload = data.encode()
        n = os.write(fd, payload)
        if n != len(payload):
            raise OSError(5, f"short write to {path}: {n} of {len(payload)} bytes")
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    found = _scope.found
    if found is None:
        return os.path.exists(path)
    key = ("e", path)
    if key not in found:
        found[key] = os.path.exists(path)
    return found[key]


def subdirs(path: str) -> Iterable[str]:
    found = _scope.found
    key = ("d", path)
    if found is not None and key in found:
        return list(found[key])
    try:
        with os.scandir(path) as it:
            names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        names = []
    if found is not None:
        found[key] = names
    return list(names)
