"""The only code that opens cgroup files.

Every path is checked to stay under a cgroup mount point, to go through no
symlink, and every write is one ``write(2)`` so the kernel sees one value.
"""

from __future__ import annotations

import os
import re
import stat
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


def check_beneath(mountpoint: str, path: str) -> str:
    """Return ``path`` normalised, after checking it stays under ``mountpoint``
    and that no component on the way is a symlink."""
    mount = os.path.normpath(mountpoint)
    norm = os.path.normpath(path)
    if norm != mount and not norm.startswith(mount + os.sep):
        raise UnsafePath(f"{path} is outside the cgroup mount {mountpoint}", path=path)
    rel = os.path.relpath(norm, mount)
    cur = mount
    for part in ([] if rel == "." else rel.split(os.sep)):
        if part in ("", ".", ".."):
            raise UnsafePath(f"{path} has a {part!r} component", path=path)
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            break  # the caller's open reports it
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(f"{cur} is a symlink; cgctl never follows links in cgroup paths",
                             path=path)
    return norm


def looks_like_machine_group(dirname: str) -> bool:
    return bool(MACHINE_GROUP_RE.match(os.path.basename(os.path.normpath(dirname))))


def read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
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
    return os.path.exists(path)


def subdirs(path: str) -> Iterable[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
