"""The libvirt hook (cgctl/hook/main.py) without libvirt: arguments, exit codes, strictness,
install/uninstall, and that libvirt's stdio is released at once (the hook's real runs under
libvirtd are in tests/libvirt/test_hook_libvirt.py)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from cgctl.hook import install as hookinstall, main as hook
from cgctl.start import domain, options
from cgctl.core.journal import Journal

CLI = [sys.executable, "-m", "cgctl.cli"]
NAME = "cgt-hook-unit"


@pytest.fixture
def env(tmp_path):
    """Paths the hook would take from the host, redirected into tmp_path."""
    run = tmp_path / "run-libvirt"
    (run / "qemu").mkdir(parents=True)
    (run / "lxc").mkdir()
    e = dict(os.environ)
    for k in ("CGCTL_HOOK_STRICT", "CGCTL_HOOK_EARLY_APPLY", "CGCTL_HOOK_TIMEOUT"):
        e.pop(k, None)
    e.update(CGCTL_LIBVIRT_RUN_DIR=str(run), CGCTL_HOOK_RUN_DIR=str(tmp_path / "hookrun"),
             CGCTL_CONFIG=str(tmp_path / "cgctl.toml"), CGCTL_JOURNAL=str(tmp_path / "j.db"))
    return e


@pytest.fixture
def uuid():
    return str(uuidlib.uuid4())


def xml(uuid, name=NAME):
    return f"<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid><vcpu>1</vcpu></domain>"


def configure(env, uuid, **settings):
    with Journal(env["CGCTL_JOURNAL"]) as j, j.transaction() as tx:
        tx.set_config(uuid, NAME, "qemu", {(k, ""): v for k, v in settings.items()})


def call(env, *args, stdin="", extra_env=None, timeout=20):
    e = dict(env, **(extra_env or {}))
    return subprocess.run(CLI + ["--journal", env["CGCTL_JOURNAL"], "hook", *args],
                          input=stdin, capture_output=True, text=True, env=e, timeout=timeout)


# --------------------------------------------------------------------------- arguments

def test_parse_options():
    o, rest = options.parse_options(["--", "--strict", "--journal=/j", "--config-file", "/c",
                                  "--no-early-apply", "qemu", "--strict", "x"])
    assert (o.strict, o.journal, o.config_file, o.early) == (True, "/j", "/c", False)
    assert rest == ["qemu", "--strict", "x"]  # after the driver word: libvirt's, untouched
    assert options.parse_options(["--no-strict", "lxc"])[0].strict is False
    o, _ = options.parse_options(["lxc"])
    assert (o.strict, o.early, o.journal) == (None, None, None)
    with pytest.raises(options.HookUsage):
        options.parse_options(["--bogus", "qemu"])
    with pytest.raises(options.HookUsage):
        options.parse_options(["--journal"])


@pytest.mark.parametrize("args", [[], ["xen", "g", "started", "begin", "-"],
                                  ["qemu", "g", "started"], ["qemu", "a", "b", "c", "d", "e"]])
def test_bad_arguments_are_usage_errors(env, args):
    r = call(env, "--", *args)
    assert r.returncode == 2, r.stderr
    assert "usage" in r.stderr


def test_parse_domain_xml(uuid):
    info = domain.parse_domain_xml(xml(uuid).encode())
    assert (info.name, info.uuid, info.vcpus) == (NAME, uuid, 1)
    info = domain.parse_domain_xml(
        f"<domain><name>n</name><uuid>{uuid.replace('-', '').upper()}</uuid>"
        "<vcpu current='2'>4</vcpu></domain>".encode())
    assert (info.uuid, info.vcpus) == (uuid, 2)
    for bad in (b"", b"<domain", b"<network/>", b"<domain><name>n</name></domain>"):
        with pytest.raises(options.HookFailure):
            domain.parse_domain_xml(bad)


# --------------------------------------------------------------------------- exit codes

@pytest.mark.parametrize("op", [("stopped", "end"), ("release", "end"), ("migrate", "begin"),
                                ("restore", "begin"), ("prepare", "end"), ("frobnicate", "x")])
def test_other_operations_do_nothing(env, uuid, op):
    configure(env, uuid, hard_limit="1073741824")
    r = call(env, "qemu", NAME, *op, "-", stdin=xml(uuid),
             extra_env={"CGCTL_HOOK_STRICT": "1"})
    # no output at all: libvirt takes the output of migrate/restore as a new domain XML
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_started_with_nothing_configured_is_fine_even_strict(env, uuid):
    r = call(env, "--", "--strict", "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    assert (r.returncode, r.stdout) == (0, "")


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_started_failure_non_strict_logs_and_exits_0_strict_exits_1(env, uuid, how, tmp_path):
    configure(env, uuid, hard_limit="1073741824")  # but the guest is not running: cannot apply
    r = call(env, "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 0
    assert "not strict" in r.stderr and "no running qemu process" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line
    if how == "flag":
        r = call(env, "--", "--strict", "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    elif how == "env":
        r = call(env, "qemu", NAME, "started", "begin", "-", stdin=xml(uuid),
                 extra_env={"CGCTL_HOOK_STRICT": "1"})
    else:
        (tmp_path / "cgctl.toml").write_text(
            "hook_strict = true\nlog_level = 'debug'\n[daemon]\nuris = ['qemu:///system']\n")
        r = call(env, "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 1, r.stderr
    assert "refusing the start" in r.stderr


def test_flag_beats_environment_beats_config_file(env, tmp_path):
    (tmp_path / "cgctl.toml").write_text("hook_strict = true\nhook_early_apply = false\n")
    o = options.Options()
    o.config_file = str(tmp_path / "cgctl.toml")
    assert options.resolve_settings(o) == (True, False)
    os.environ["CGCTL_HOOK_STRICT"] = "0"
    try:
        assert options.resolve_settings(o) == (False, False)
        o.strict = True
        assert options.resolve_settings(o) == (True, False)
    finally:
        del os.environ["CGCTL_HOOK_STRICT"]


def test_bad_config_file_means_defaults_and_a_log_line(tmp_path):
    msgs = []
    o = options.Options()
    o.config_file = str(tmp_path / "cgctl.toml")
    (tmp_path / "cgctl.toml").write_text("hook_strict = 'yes'\n")
    assert options.resolve_settings(o, lambda m, error=False: msgs.append(m)) == (False, True)
    (tmp_path / "cgctl.toml").write_text("hook_strict = \n")
    assert options.resolve_settings(o, lambda m, error=False: msgs.append(m)) == (False, True)
    assert len(msgs) == 2 and "must be true or false" in msgs[0] and "cannot parse" in msgs[1]


def test_corrupt_journal(env, uuid):
    with open(env["CGCTL_JOURNAL"], "wb") as f:
        f.write(b"this is not a database" * 100)
    r = call(env, "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 0 and "not a SQLite database" in r.stderr
    r = call(env, "--", "--strict", "qemu", NAME, "started", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 1 and "refusing the start" in r.stderr


def test_reconnect_always_exits_0_even_when_everything_fails(env, uuid, tmp_path):
    with open(env["CGCTL_JOURNAL"], "wb") as f:
        f.write(b"garbage" * 100)
    qemu_run = os.path.join(env["CGCTL_LIBVIRT_RUN_DIR"], "qemu")
    with open(os.path.join(qemu_run, NAME + ".pid"), "w") as f:
        f.write(f"{os.getpid()}\n")  # a live PID that is not this guest
    with open(os.path.join(qemu_run, NAME + ".xml"), "w") as f:
        f.write(f"<domstatus state='running' pid='{os.getpid()}'>{xml(uuid)}</domstatus>")
    (tmp_path / "cgctl.toml").write_text("hook_strict = true\n")
    for stdin in (xml(uuid), "<<<", ""):
        r = call(env, "--", "--strict", "qemu", NAME, "reconnect", "begin", "-", stdin=stdin,
                 extra_env={"CGCTL_HOOK_STRICT": "1"})
        assert (r.returncode, r.stdout) == (0, "")
    # and with the run dir unreadable as a directory
    env2 = dict(env, CGCTL_LIBVIRT_RUN_DIR=env["CGCTL_JOURNAL"])
    r = call(env2, "--", "--strict", "lxc", NAME, "reconnect", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 0


def test_malformed_xml(env, uuid):
    configure(env, uuid, hard_limit="1073741824")
    for op in ("prepare", "start"):
        r = call(env, "qemu", NAME, op, "begin", "-", stdin="<domain><name>")
        assert r.returncode == 0
        assert "malformed domain XML on stdin" in r.stderr
    r = call(env, "qemu", NAME, "started", "begin", "-", stdin="not xml")
    assert r.returncode == 0 and "malformed domain XML" in r.stderr


def test_hard_time_bound(env, uuid, tmp_path):
    """Whatever hangs (here: reading the configuration file, a FIFO nobody writes), the hook
    is gone within its bound: exit 0, or 1 when strict at `started`."""
    fifo = tmp_path / "cgctl.toml"
    os.mkfifo(fifo)
    r = call(env, "qemu", NAME, "started", "begin", "-", stdin=xml(uuid),
             extra_env={"CGCTL_HOOK_TIMEOUT": "0.5"})
    assert r.returncode == 0 and "giving up" in r.stderr
    r = call(env, "--", "--strict", "qemu", NAME, "started", "begin", "-", stdin=xml(uuid),
             extra_env={"CGCTL_HOOK_TIMEOUT": "0.5"})
    assert r.returncode == 1 and "refusing the start" in r.stderr
    r = call(env, "--", "--strict", "qemu", NAME, "reconnect", "begin", "-", stdin=xml(uuid),
             extra_env={"CGCTL_HOOK_TIMEOUT": "0.5"})
    assert r.returncode == 0  # each call came back ("giving up"): call()'s own timeout is the hang guard


# --------------------------------------------------------------------------- stdio / the early applier

def _applier_pid(env, uuid):
    from tests.unit.conftest import applier_pid
    return applier_pid(env["CGCTL_HOOK_RUN_DIR"], NAME)


def test_prepare_releases_libvirts_stdio_while_the_applier_waits(env, uuid):
    configure(env, uuid, hard_limit="1073741824")
    e = dict(env, CGCTL_HOOK_EARLY_TIMEOUT="30")
    t0 = time.monotonic()
    p = subprocess.Popen(CLI + ["--journal", env["CGCTL_JOURNAL"], "hook", "qemu", NAME,
                                "prepare", "begin", "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=e)
    out, err = p.communicate(xml(uuid).encode(), timeout=10)  # EOF on both pipes
    took = time.monotonic() - t0
    assert (p.returncode, out, err) == (0, b"", b"")
    assert took < 2.0
    pid = _applier_pid(env, uuid)
    try:
        assert os.path.exists(f"/proc/{pid}")  # still waiting for a guest that never comes
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # its own session (made by the intermediate child, which is gone), not ours or the hook's
        assert int(fields[3]) not in (os.getsid(0), p.pid) and int(fields[3]) != pid
        assert not os.path.exists(f"/proc/{fields[3]}")
        fds = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert {fds[s] for s in ("0", "1", "2")} == {"/dev/null"}
        assert not [t for t in fds.values() if t.startswith("pipe:")], fds
        # a second launch (`start begin` after `prepare begin`) does not start another one
        r = call(e, "qemu", NAME, "start", "begin", "-", stdin=xml(uuid))
        assert r.returncode == 0
        assert _applier_pid(env, uuid) == pid
    finally:
        os.kill(pid, signal.SIGTERM)


def test_applier_gives_up_at_its_deadline(env, uuid):
    configure(env, uuid, hard_limit="1073741824")
    e = dict(env, CGCTL_HOOK_EARLY_TIMEOUT="0.3")
    r = call(e, "qemu", NAME, "prepare", "begin", "-", stdin=xml(uuid))
    assert r.returncode == 0
    lock = os.path.join(env["CGCTL_HOOK_RUN_DIR"], f"early-qemu-{NAME}.lock")
    end = time.monotonic() + 5
    while os.path.exists(lock) and time.monotonic() < end:
        time.sleep(0.05)
    assert not os.path.exists(lock)  # gone, and its lock file with it


def test_no_applier_when_disabled_or_nothing_configured(env, uuid):
    r = call(env, "--", "--no-early-apply", "qemu", NAME, "prepare", "begin", "-",
             stdin=xml(uuid))
    assert r.returncode == 0
    assert not os.path.exists(os.path.join(env["CGCTL_HOOK_RUN_DIR"],
                                           f"early-qemu-{NAME}.lock"))


def test_a_bad_domain_xml_is_said_once_per_call(env, uuid):
    """The XML is parsed once per call (cgctl/start/domain.py): the metadata step and the apply
    of `started` do not each report the same problem."""
    configure(env, uuid, cpu_shares="512")
    bad = ("<domain><name>" + NAME + "</name><metadata><g xmlns='http://cgctl.org/xmlns/guest'/>"
           "</metadata><uuid>not-a-uuid</uuid></domain>")
    r = call(env, "--", "--no-early-apply", "qemu", NAME, "started", "begin", "-", stdin=bad)
    assert r.returncode == 0
    assert r.stderr.count("has no valid <uuid>") == 1, r.stderr


def test_a_domain_xml_without_metadata_does_not_load_the_metadata_code(env, uuid, tmp_path):
    """The common case (no <metadata> element) costs one byte search, no import."""
    configure(env, uuid, cpu_shares="512")
    out = tmp_path / "modules"  # not stdout: the hook puts it on /dev/null
    code = ("import sys, cgctl.hook.main as h;"
            f"h.main(['--no-early-apply', 'qemu', {NAME!r}, 'started', 'begin', '-']);"
            "bad = [m for m in sys.modules if m in ('cgctl.model.metadata', 'cgctl.core.travel')];"
            f"open({str(out)!r}, 'w').write(repr(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       input=xml(uuid), timeout=30)
    assert out.read_text() == "[]", r.stderr


def test_hook_never_imports_libvirt(env, uuid, tmp_path):
    configure(env, uuid, hard_limit="1073741824")
    out = tmp_path / "modules"
    code = ("import sys, cgctl.hook.main as h;"
            "h.main(['qemu', 'n', 'started', 'begin', '-']);"
            "h.main(['qemu', 'n', 'reconnect', 'begin', '-']);"
            "bad = [m for m in sys.modules if m in ('libvirt', 'cgctl.virt', 'cgctl.service.daemon')];"
            f"open({str(out)!r}, 'w').write(repr(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       input=xml(uuid, "n"))
    assert out.read_text() == "[]", r.stderr


def test_no_hook_module_imports_libvirt_or_the_service():
    """Every module of the package and of the applier's package below it (cgctl/start/, the
    service's hand-off too) imported: none pulls libvirt in (calling libvirt from its hook
    deadlocks), nor the service."""
    import pkgutil
    import cgctl.hook
    import cgctl.start
    names = sorted(f"{pkg.__name__}.{m.name}" for pkg in (cgctl.hook, cgctl.start)
                   for m in pkgutil.iter_modules(pkg.__path__) if m.name != "__main__")
    assert {"cgctl.hook.main", "cgctl.start.options", "cgctl.hook.hooklog", "cgctl.start.domain",
            "cgctl.hook.apply", "cgctl.hook.early", "cgctl.hook.install", "cgctl.start.applier",
            "cgctl.start.handoff"} <= set(names)
    code = ("import sys, importlib;"
            f"[importlib.import_module(n) for n in {names!r}];"
            "print([m for m in sys.modules if m in ('libvirt', 'cgctl.virt', 'cgctl.service.daemon')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr + r.stdout


def test_install_imports_only_the_options_and_the_package_init_is_empty():
    """No cycle with the entry point (install needs the constants only), and importing the
    package costs nothing (``python -m cgctl.hook`` imports it first)."""
    import cgctl.hook
    code = ("import sys, cgctl.hook.install;"
            "print(sorted(m for m in sys.modules if m.startswith(('cgctl.hook.', 'cgctl.start.'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "['cgctl.hook.install', 'cgctl.start.options']", r.stderr
    with open(cgctl.hook.__file__) as f:
        assert f.read() == ""


# --------------------------------------------------------------------------- install / uninstall

def test_install_keeps_foreign_hooks_and_uninstall_removes_only_ours(env, tmp_path, uuid):
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    foreign = hooks / "qemu.d" / "50-operator"
    foreign.write_text("#!/bin/sh\nexit 0\n")
    (hooks / "lxc").write_text("#!/bin/sh\nexit 0\n")  # the old single-file hook
    r = call(env, "install", "--hooks-dir", str(hooks), "--strict")
    assert r.returncode == 0, r.stderr
    assert "restart libvirtd" in r.stdout
    assert f"{foreign}: kept" in r.stdout and f"{hooks / 'lxc'}: kept" in r.stdout
    for d in ("qemu", "lxc"):
        script = hooks / f"{d}.d" / "cgctl"
        text = script.read_text()
        assert hookinstall.MARKER in text and sys.executable in text
        assert env["CGCTL_JOURNAL"] in text and "--strict" in text
        assert f' {d} "$@"\n' in text and "exec " not in text  # run, not exec'd: see
        assert "strict=yes" in text                              # test_hook_script.py
        assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert foreign.read_text() == "#!/bin/sh\nexit 0\n"
    # the installed script runs the hook (libvirt's call: SCRIPT NAME OP SUBOP EXTRA)
    script = str(hooks / "qemu.d" / "cgctl")
    r = subprocess.run([script, NAME, "started", "begin", "-"], input=xml(uuid), text=True,
                       capture_output=True, env=env, timeout=20)
    assert r.returncode == 0, r.stderr
    configure(env, uuid, hard_limit="1073741824")
    r = subprocess.run([script, NAME, "started", "begin", "-"], input=xml(uuid), text=True,
                       capture_output=True, env=env, timeout=20)
    assert r.returncode == 1 and "refusing the start" in r.stderr  # --strict was baked in
    # installing again updates ours
    r = call(env, "install", "--hooks-dir", str(hooks), "--no-early-apply")
    assert r.returncode == 0 and "updated" in r.stdout
    assert "--no-early-apply" in (hooks / "qemu.d" / "cgctl").read_text()
    r = call(env, "uninstall", "--hooks-dir", str(hooks))
    assert r.returncode == 0
    assert not (hooks / "qemu.d" / "cgctl").exists() and not (hooks / "lxc.d" / "cgctl").exists()
    assert foreign.exists() and (hooks / "lxc").exists()


def test_never_overwrites_or_removes_a_foreign_file_named_like_ours(env, tmp_path):
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    theirs = hooks / "qemu.d" / "cgctl"
    theirs.write_text("#!/bin/sh\n# someone else's\nexit 0\n")
    r = call(env, "install", "--hooks-dir", str(hooks))
    assert r.returncode == 1 and "not installed by cgctl" in r.stderr
    assert theirs.read_text() == "#!/bin/sh\n# someone else's\nexit 0\n"
    r = call(env, "uninstall", "--hooks-dir", str(hooks))
    assert r.returncode == 0 and "kept (not installed by cgctl)" in r.stdout
    assert theirs.exists()


def test_install_with_a_cgctl_executable(tmp_path):
    o = options.Options()
    o.journal, o.strict = "/j.db", True
    assert hookinstall.hook_command("/usr/bin/cgctl", o) == ["/usr/bin/cgctl", "hook", "--",
                                                      "--journal", "/j.db", "--strict"]
    assert hookinstall.hook_command("/v/bin/python3", o)[:3] == ["/v/bin/python3", "-c",
                                                                 hookinstall.ENTRY]
