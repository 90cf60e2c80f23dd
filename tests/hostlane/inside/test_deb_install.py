"""The Debian package on a Debian 12 host with systemd (`tests/hostlane/run --install deb`):
built on the test machine, installed with docs/install.md's lines, then: the files where Debian
has them, the packaged unit active from /usr/bin/cgctl, the tmpfiles entry applied, the man page
and completion, the hook and a guest start with its settings; last `apt-get remove` and `purge`
leave the host as it was (libvirt's hooks directory, no path named like cgctl, guests running).
The tests run in file order: the last two remove the package."""
import gzip
import os
import shutil
import subprocess

import pytest

from .hostkit import Guest, cgctl, cgctl_json, effective_memory_max, read, sh, systemctl, unit_props, wait_for

pytestmark = pytest.mark.skipif(os.environ.get("HOSTLANE_INSTALL") != "deb",
                                reason="the Debian package lane only: tests/hostlane/run --install deb")

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
BEFORE = "/var/lib/hostlane/before-deb"      # deb_state.sh prepare, before the install
FACTS = "/run/hostlane/facts.txt"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
PACKAGED = ("/usr/bin/cgctl", "/lib/systemd/system/cgctl.service", "/usr/lib/tmpfiles.d/cgctl.conf",
            "/usr/share/man/man1/cgctl.1.gz", "/usr/share/bash-completion/completions/cgctl",
            "/usr/share/zsh/vendor-completions/_cgctl", "/usr/share/doc/cgctl/operations.md",
            "/usr/share/doc/cgctl/copyright", "/usr/lib/python3/dist-packages/cgctl/__init__.py")


def note(line: str) -> None:
    with open(FACTS, "a") as f:
        f.write(line + "\n")


def state(tag: str) -> dict:
    """deb_state.sh's notes now: {'hooks.txt': [...], 'cgctl-paths.txt': [...]}."""
    d = f"/tmp/deb-state-{tag}"
    sh("bash", os.path.join(HERE, "deb_state.sh"), "snapshot", d)
    return {n: read(os.path.join(d, n)).splitlines() for n in ("hooks.txt", "cgctl-paths.txt")}


def before() -> dict:
    return {n: read(os.path.join(BEFORE, n)).splitlines() for n in ("hooks.txt", "cgctl-paths.txt")}


def package_status() -> str:
    return sh("dpkg-query", "-W", "-f=${Status}", "cgctl", check=False).stdout.strip()


@pytest.fixture(scope="module")
def guests():
    """Guests of this module, removed with virsh only: `cgctl forget` is gone with the package."""
    made = []

    def make(name):
        g = Guest(name).define()
        made.append(g)
        return g
    yield make
    for g in made:
        g.destroy()
        g.virsh("undefine", g.name, check=False)


def test_installed_by_dpkg_into_debian_places():
    assert package_status() == "install ok installed"
    listed = set(sh("dpkg", "-L", "cgctl").stdout.split())
    for path in PACKAGED:
        assert path in listed and os.path.isfile(path), path
    assert shutil.which("cgctl") == "/usr/bin/cgctl"
    assert not os.path.exists("/usr/local/bin/cgctl") and not os.path.exists("/opt/cgctl")
    # from /: pytest's working directory is the checkout, whose cgctl/ python3 would import
    r = subprocess.run(["python3", "-c", "import cgctl; print(cgctl.__file__)"], cwd="/",
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "/usr/lib/python3/dist-packages/cgctl/__init__.py", r.stderr
    version = cgctl("--version").stdout.strip()
    assert version.startswith("cgctl ") and "host cgroup mode:" in version, version
    note(f"deb: {version}; {len(listed)} paths in the package")


def test_the_packaged_unit_is_active_from_usr_bin_cgctl():
    p = unit_props("cgctl.service", "Type", "ActiveState", "SubState", "FragmentPath", "DropInPaths",
                   "UnitFileState", "MainPID", "StatusText", "Documentation")
    assert (p["Type"], p["ActiveState"], p["SubState"]) == ("notify", "active", "running"), p
    assert os.path.realpath(p["FragmentPath"]) == os.path.realpath("/lib/systemd/system/cgctl.service"), p
    assert p["DropInPaths"] == "" and p["UnitFileState"] == "enabled", p   # no drop-in needed
    assert "qemu:///system" in p["StatusText"], p
    with open(f"/proc/{p['MainPID']}/cmdline") as f:
        argv = f.read().split("\0")
    assert "/usr/bin/cgctl" in argv and "daemon" in argv, argv
    docs = [d[len("file:"):] for d in p["Documentation"].split() if d.startswith("file:")]
    assert docs and all(os.path.isfile(d) for d in docs), p["Documentation"]


def test_the_tmpfiles_entry_is_applied():
    st = os.stat("/var/lib/cgctl")
    assert oct(st.st_mode & 0o7777) == "0o700" and (st.st_uid, st.st_gid) == (0, 0)
    assert "d /var/lib/cgctl 0700 root root" in sh("systemd-tmpfiles", "--cat-config").stdout


def test_man_page():
    with gzip.open("/usr/share/man/man1/cgctl.1.gz", "rt") as f:
        text = f.read()
    assert text.startswith(".TH CGCTL 1") and ".SH EXIT STATUS" in text and ".SS memtune" in text
    # the image carries man-db as a Debian host does (tests/hostlane/image/packages)
    r = sh("env", "MANWIDTH=80", "man", "-P", "cat", "cgctl", check=False)
    assert r.returncode == 0 and "EXIT STATUS" in r.stdout and "memtune" in r.stdout, r.stderr
    note("deb: `man cgctl` renders the page")


def test_bash_completion_from_its_debian_place():
    script = ("source /usr/share/bash-completion/completions/cgctl; COMP_WORDS=(cgctl me); "
              "COMP_CWORD=1; _cgctl; echo \"${COMPREPLY[@]}\"")
    assert sh("bash", "-c", script).stdout.split() == ["memtune"]
    # what an interactive bash does at the first <Tab> after `cgctl ` (bash-completion's loader)
    loader = "/usr/share/bash-completion/bash_completion"
    r = sh("bash", "-c", f". {loader}; __load_completion cgctl; complete -p cgctl")
    assert "_cgctl" in r.stdout


def test_zsh_completes_subcommands_from_vendor_completions():
    """zsh's compinit finds _cgctl in Debian's $fpath; completing `cgctl me` offers memtune."""
    script = ("autoload -Uz compinit && compinit -u -D; "
              "(( ${+_comps[cgctl]} )) && print -r -- ${_comps[cgctl]}")
    r = sh("zsh", "-f", "-c", script, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "_cgctl", (r.stdout, r.stderr)


def test_zsh_completion_in_vendor_completions():
    head = read("/usr/share/zsh/vendor-completions/_cgctl").splitlines()[0]
    assert head == "#compdef cgctl"   # zsh's compinit reads it from this $fpath directory


def test_hook_installed_and_a_started_guest_gets_its_settings(guests):
    for driver in ("qemu", "lxc"):
        text = read(f"/etc/libvirt/hooks/{driver}.d/cgctl")
        assert "cgctl-hook" in text and "/usr/bin/python3" in text and "/opt/" not in text, text
    assert read("/etc/libvirt/hooks/qemu.d/50-operator").endswith("exit 0")   # the operator's
    g = guests("hl-deb")
    cgctl("set", g.name, "hard_limit=180M", "vcpu_quota=30%", "--config")
    g.start()
    # no waiting: the hook ran inside `virsh start`
    assert effective_memory_max(g.cgroup, g.scope) == 180 * MiB
    assert read(os.path.join(g.cgroup, "vcpu0", "cpu.max")).split()[0] == "30000"
    rows = cgctl_json("history", g.name)
    rows = rows if isinstance(rows, list) else rows.get("history", rows.get("rows", []))
    assert any(str(r.get("source")) == "hook" for r in rows), rows
    # a change now, through the packaged service's socket
    cgctl("set", g.name, "hard_limit=170M", "--live")
    assert effective_memory_max(g.cgroup, g.scope) == 170 * MiB
    # the service alone (no hook) puts the config back at a start
    cgctl("hook", "uninstall")
    systemctl("restart", "libvirtd.service")
    try:
        g.destroy()
        g.start()
        wait_for(lambda: effective_memory_max(g.cgroup, g.scope) == 180 * MiB,
                 "the packaged service applying the config at the start", 60)
    finally:
        cgctl("hook", "install")   # as docs/install.md installs it
        systemctl("restart", "libvirtd.service")
    assert os.access("/etc/libvirt/hooks/qemu.d/cgctl", os.X_OK)


def test_remove_stops_everything_of_cgctl_and_keeps_guests_and_journal(guests):
    g = guests("hl-deb-rm")
    cgctl("set", g.name, "hard_limit=150M", "--config")
    g.start()
    assert effective_memory_max(g.cgroup, g.scope) == 150 * MiB
    pid = g.pid
    main_pid = unit_props("cgctl.service", "MainPID")["MainPID"]
    r = sh("apt-get", "remove", "-y", "cgctl", timeout=600, input="")
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr  # e.g. dirs not empty
    assert package_status() == "deinstall ok config-files"
    p = unit_props("cgctl.service", "LoadState", "ActiveState")
    assert (p["LoadState"], p["ActiveState"]) == ("not-found", "inactive"), p
    assert not os.path.exists(f"/proc/{main_pid}")
    assert not os.path.lexists("/etc/systemd/system/multi-user.target.wants/cgctl.service")
    now, was = state("removed"), before()
    assert now["hooks.txt"] == was["hooks.txt"]          # the operator's hook kept, ours gone
    # what stays on remove: the journal (a reinstall finds it) and /run/cgctl until a reboot
    left = sorted(set(now["cgctl-paths.txt"]) - set(was["cgctl-paths.txt"]))
    assert left and all(p.startswith(("/var/lib/cgctl", "/run/cgctl")) for p in left), left
    assert os.path.isfile("/var/lib/cgctl/journal.db")
    # the guest kept running, and starts again with no hook of cgctl's run (none left to fail)
    assert g.running() and g.pid == pid
    g.destroy()
    since = sh("date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    g.start()
    assert effective_memory_max(g.cgroup, g.scope) == -1   # no cgctl: libvirt's own (no limit)
    logs = sh("journalctl", "-u", "libvirtd", "--since", since, "--no-pager").stdout
    assert "cgctl" not in logs, logs
    note(f"deb: after remove, left: {left}")


def test_purge_leaves_the_host_as_before_the_install():
    r = sh("apt-get", "purge", "-y", "cgctl", timeout=600, input="")
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
    assert package_status() in ("", "unknown ok not-installed")
    now, was = state("purged"), before()
    assert now == was, {k: sorted(set(now[k]) ^ set(was[k])) for k in now}
