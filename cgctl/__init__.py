"""cgctl: cgroup resource control for libvirt guests.

Importing the package must stay cheap and must not import libvirt: the
hook and the fast `--live` path depend on it.
"""

__version__ = "0.1.0"
