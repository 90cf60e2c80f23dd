"""Every path and default cgctl uses, in one place (overridable by environment for tests)."""

import os

CGROUP_ROOT = os.environ.get("CGCTL_CGROUP_ROOT", "/sys/fs/cgroup")
PROC_ROOT = os.environ.get("CGCTL_PROC_ROOT", "/proc")
LIBVIRT_RUN_DIR = os.environ.get("CGCTL_LIBVIRT_RUN_DIR", "/run/libvirt")
LIBVIRT_ETC_DIR = os.environ.get("CGCTL_LIBVIRT_ETC_DIR", "/etc/libvirt")
# the built-in defaults; what a process runs with is cgctl.config.resolve():
# command line > environment > config file > these
DRIVERS = ("qemu", "lxc")  # the libvirt drivers cgctl serves (run files, hook scripts, journal)
BUILTIN_JOURNAL = "/var/lib/cgctl/journal.db"
BUILTIN_URIS = ("qemu:///system", "lxc:///system")
JOURNAL_PATH = os.environ.get("CGCTL_JOURNAL", BUILTIN_JOURNAL)
CONFIG_PATH = os.environ.get("CGCTL_CONFIG", "/etc/cgctl/cgctl.toml")
# profile files (cgctl/core/profiles.py): $CGCTL_PROFILES_DIR, else profiles.d beside CONFIG_PATH
DEFAULT_URIS = tuple(
    u for u in os.environ.get("CGCTL_URIS", "qemu:///system lxc:///system").split() if u
)

# the libvirt hook (cgctl/hook/main.py)
LIBVIRT_HOOKS_DIR = os.environ.get("CGCTL_LIBVIRT_HOOKS_DIR", "/etc/libvirt/hooks")
HOOK_RUN_DIR = os.environ.get("CGCTL_HOOK_RUN_DIR", "/run/cgctl")  # early appliers' lock files
# the service answers `cgctl set` here, so that a change costs no interpreter start-up of imports
COMMAND_SOCKET = os.environ.get("CGCTL_SOCKET", "/run/cgctl/cgctl.sock")
