"""What cgroup hierarchies this host has, and which one owns each controller.

`parse()` is pure: it reads the text of /proc/self/mounts and /proc/cgroups and
asks a callback for the content of each cgroup2 root's `cgroup.controllers`.
`detect()` is the thin reader that feeds it from a (real or faked) /proc.

A hybrid host routes each controller to the hierarchy that owns it, the way
libvirt's vircgroup.c does: a controller bound to a v1 hierarchy is never in
cgroup2's `cgroup.controllers` (the kernel guarantees it); should both claim one
anyway, v1 wins.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterable, Optional, NamedTuple

from cgctl import consts, errors

# Mount options the kernel may print for a cgroup (v1) mount that are not
# controller names (fs/cgroup/cgroup-v1.c cgroup1_show_options, VFS flags).
_NOT_CONTROLLERS = frozenset({
    "rw", "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
    "relatime", "norelatime", "noatime", "atime", "strictatime", "nodiratime",
    "diratime", "lazytime", "sync", "async", "dirsync", "mand", "nomand",
    "silent", "seclabel", "none", "noprefix", "xattr", "clone_children", "cpuset_v2_mode",
    "sane_behavior", "favordynmods", "nofavordynmods",
})

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

# /proc/cgroups and v1 mount options use a controller's legacy name, cgroup2 its
# new one (kernel: ss->legacy_name vs ss->name).  cgctl says "io"; asking for either finds it.
V1_NAMES = {"io": "blkio"}
_ALIASES = {**V1_NAMES, **{v1: v2 for v2, v1 in V1_NAMES.items()}}


def _names(controller: str) -> tuple:
    alias = _ALIASES.get(controller)
    return (controller, alias) if alias else (controller,)


class Hierarchy(NamedTuple):
    version: int                 # 1 or 2
    mountpoint: str              # as in mounts, unescaped
    controllers: frozenset[str]  # controllers this hierarchy owns
    name: Optional[str] = None   # v1 named hierarchy, e.g. 'systemd'
    read_only: bool = False

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "mountpoint": self.mountpoint,
            "controllers": sorted(self.controllers),
            "name": self.name,
            "read_only": self.read_only,
        }


class Host(NamedTuple):
    hierarchies: tuple[Hierarchy, ...]
    enabled: frozenset[str]       # enabled in /proc/cgroups; if unknown, what is mounted
    mode: str                     # 'v1' | 'v2' | 'hybrid' | 'none'
    enabled_known: bool = True  # False: no /proc/cgroups

    def owner(self, controller: str) -> Hierarchy:
        """The hierarchy that owns `controller` (v1 first); 'blkio' and 'io' are one controller."""
        for version in (1, 2):
            for h in self.hierarchies:
                if h.version == version and any(n in h.controllers for n in _names(controller)):
                    return h
        raise errors.Unsupported(f"controller {controller} is not mounted on this host")

    def has(self, controller: str) -> bool:
        return any(n in h.controllers for h in self.hierarchies for n in _names(controller))

    @property
    def v2(self) -> Optional[Hierarchy]:
        """The cgroup2 mount (owning controllers or not), if there is one."""
        return next((h for h in self.hierarchies if h.version == 2), None)

    def owners(self) -> dict:
        """Controller -> version of the hierarchy that owns it."""
        found = {}
        for h in self.hierarchies:
            for c in h.controllers:
                found[c] = h.version
        return dict(sorted(found.items()))

    def to_dict(self) -> dict:
        owners = self.owners()
        return {
            "mode": self.mode,
            "hierarchies": [h.to_dict() for h in self.hierarchies],
            "owners": owners,
            "v2_owns": sorted(c for c, v in owners.items() if v == 2),
            "enabled": sorted(self.enabled),
            "enabled_known": self.enabled_known,
            "unmounted": sorted(c for c in self.enabled if not self.has(c)),
        }


class _Mount(NamedTuple):
    pos: int
    fstype: str
    mountpoint: str
    options: tuple


def _unescape(field_text: str) -> str:
    """Undo the kernel's octal escapes in /proc/mounts (\\040 space, \\011 tab, \\012, \\134)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def _mounts(mounts_text: str) -> list:
    out = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        out.append(_Mount(len(out), fields[2], _unescape(fields[1]), tuple(fields[3].split(","))))
    return out


def _visible(mounts: list) -> list:
    """Drop mounts hidden by a later mount on the same point or on a parent of it."""
    visible = []
    for m in mounts:
        hidden = False
        for later in mounts[m.pos + 1:]:
            top = later.mountpoint.rstrip("/")
            if top and (m.mountpoint == later.mountpoint or m.mountpoint.startswith(top + "/")):
                hidden = True
                break
        if not hidden:
            visible.append(m)
    return visible


def _preference(prefer_root: str) -> Callable:
    root = prefer_root.rstrip("/")

    def key(m: _Mount):
        under = m.mountpoint == root or m.mountpoint.startswith(root + "/")
        return (not under, len(m.mountpoint), m.pos)
    return key


def parse_proc_cgroups(cgroups_text: Optional[str]) -> Optional[frozenset]:
    """Names with enabled == 1 in /proc/cgroups; None when the file is unknown."""
    if cgroups_text is None:
        return None
    enabled = set()
    for line in cgroups_text.splitlines():
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "1":
            enabled.add(fields[0])
    return frozenset(enabled)


def parse(mounts_text: str, cgroups_text: Optional[str],
          v2_controllers: Callable[[str], Optional[str]],
          *, prefer_root: Optional[str] = None) -> Host:
    """Build a Host from the text of /proc/self/mounts and /proc/cgroups.

    v2_controllers(mountpoint) returns that cgroup2 root's cgroup.controllers
    content, or None when unreadable (then it owns nothing).  When the same
    hierarchy is mounted more than once, the mount under `prefer_root`
    (default consts.CGROUP_ROOT) with the shortest path wins.
    """
    key = _preference(prefer_root or consts.CGROUP_ROOT)
    mounts = _visible(_mounts(mounts_text))

    v1: dict = {}            # (controllers, name) -> best mount
    v2: Optional[_Mount] = None
    for m in mounts:
        if m.fstype == "cgroup":
            ctrls = frozenset(o for o in m.options if o not in _NOT_CONTROLLERS and "=" not in o)
            names = [o[len("name="):] for o in m.options if o.startswith("name=")]
            ident = (ctrls, names[0] if names else None)
            if ident not in v1 or key(m) < key(v1[ident]):
                v1[ident] = m
        elif m.fstype == "cgroup2":
            if v2 is None or key(m) < key(v2):
                v2 = m

    chosen = []
    for (ctrls, name), m in v1.items():
        chosen.append((m.pos, Hierarchy(1, m.mountpoint, ctrls, name, "ro" in m.options)))
    v1_owned = frozenset().union(*(h.controllers for _, h in chosen))
    if v2 is not None:
        text = v2_controllers(v2.mountpoint)
        ctrls = frozenset((text or "").split()) - v1_owned  # v1 wins a double claim
        chosen.append((v2.pos, Hierarchy(2, v2.mountpoint, ctrls, None, "ro" in v2.options)))
    hierarchies = tuple(h for _, h in sorted(chosen, key=lambda pair: pair[0]))

    has_v1_controllers = any(h.version == 1 and h.controllers for h in hierarchies)
    if not hierarchies:
        mode = "none"
    elif v2 is None:
        mode = "v1"
    elif has_v1_controllers:
        mode = "hybrid"
    else:
        mode = "v2"   # cgroup2 plus at most a controller-less named v1 hierarchy

    enabled = parse_proc_cgroups(cgroups_text)
    known = enabled is not None
    if enabled is None:
        # a mounted controller is an enabled one: that much is certain
        enabled = frozenset().union(*(h.controllers for h in hierarchies))
    return Host(hierarchies, enabled, mode, known)


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError:
        return None


def _first_readable(paths: Iterable[str]) -> Optional[str]:
    for p in paths:
        text = _read(p)
        if text is not None:
            return text
    return None


def detect(proc_root: Optional[str] = None) -> Host:
    """Read this host's (or a faked /proc's) mounts and /proc/cgroups."""
    proc_root = proc_root or consts.PROC_ROOT
    mounts_paths = [os.path.join(proc_root, "self", "mounts"), os.path.join(proc_root, "mounts")]
    mounts_text = _first_readable(mounts_paths)
    if mounts_text is None:
        raise errors.Unsupported(f"cannot read the mount table ({' or '.join(mounts_paths)})",
                                 path=mounts_paths[0])
    # /proc/cgroups is absent on kernels built without cgroup v1: fine, unknown.
    cgroups_text = _read(os.path.join(proc_root, "cgroups"))
    return parse(mounts_text, cgroups_text,
                 lambda mountpoint: _read(os.path.join(mountpoint, "cgroup.controllers")))
