"""The installed hook script decides the exit status libvirt sees, whatever happens to what it
runs (docs/hook.md, "When cgctl itself is broken").

Each test installs the real script with ``hookinstall.install`` into a temporary hooks
directory, pointing at a broken cgctl, and runs it with ``/bin/sh`` as libvirt does
(``SCRIPT NAME OP SUBOP EXTRA``, the domain XML on stdin), for every call libvirt makes:

- (a) an interpreter that does not exist (a removed venv, a Python upgrade);
- (b) a Python without cgctl (``/usr/bin/python3 -I``: an uninstalled package);
- (c) a cgctl whose import raises (a fake ``cgctl`` package first on ``PYTHONPATH``);
- (d) a cgctl.hook killed by a signal (SIGKILL, SIGSEGV);

each under every way strictness is given (baked ``--strict`` / ``--no-strict``, the
environment, the configuration file, nothing). Only ``started begin`` under strict may exit
non-zero; migrate/restore print nothing; the calls cgctl does not act on never start Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid as uuidlib

import pytest

from cgctl.hook import install as hookinstall
from cgctl.start import options

NAME = "cgt-hook-script"
SH = "/bin/sh"
SYSTEM_PYTHON = "/usr/bin/python3"

# every (op, subop) libvirt passes to a qemu or lxc hook (libvirt's hooks.h), and a made-up one
HANDLED = [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("reconnect", "begin")]
NOOPS = [("stopped", "end"), ("release", "end"), ("migrate", "begin"), ("restore", "begin"),
         ("attach", "begin"), ("prepare", "end"), ("frobnicate", "x")]
CALLS = HANDLED + NOOPS

# how strictness reaches the hook: (installed strict option, environment, config file text)
STRICTNESS = {
    "baked-strict": (True, None, None),
    "baked-no-strict": (False, "1", "hook_strict = true\n"),  # the baked flag wins
    "env-strict": (None, " yes ", None),
    "config-strict": (None, None, "# cgctl\nlog_level = 'info'\nhook_strict = true  # closed\n"
                                  "[daemon]\nuris = []\n"),
    "config-table-only": (None, None, "[daemon]\nhook_strict = true\n"),  # not top level
    "default": (None, None, None),
}
STRICT_MODES = {"baked-strict", "env-strict", "config-strict"}


def xml(uuid):
    return f"<domain type='qemu'><name>{NAME}</name><uuid>{uuid}</uuid><vcpu>1</vcpu></domain>"


class Broken:
    """A hooks directory holding cgctl's real script, installed to run ``command``."""

    def __init__(self, tmp_path, command, mode="default", driver="qemu"):
        strict, self.env_strict, config = STRICTNESS[mode]
        self.tmp = tmp_path
        self.driver = driver
        opts = options.Options()
        opts.journal = str(tmp_path / "journal.db")
        opts.strict = strict
        opts.config_file = str(tmp_path / "cgctl.toml")
        if config is not None:
            (tmp_path / "cgctl.toml").write_text(config)
        hooks = tmp_path / "hooks"
        argv = [*command, *opts.argv()]
        hookinstall.install(str(hooks), argv, drivers=(driver,), opts=opts)
        self.script = str(hooks / f"{driver}.d" / hookinstall.SCRIPT_NAME)
        # a logger that records its arguments, first on PATH
        self.bin = tmp_path / "bin"
        self.bin.mkdir(exist_ok=True)
        self.logged = tmp_path / "logger.out"
        fake_logger = self.bin / "logger"
        fake_logger.write_text(f'#!/bin/sh\nprintf "%s|" "$@" >> {self.logged}\necho >> '
                               f'{self.logged}\n')
        fake_logger.chmod(0o755)

    def env(self, **extra):
        e = {"PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
        if self.env_strict is not None:
            e["CGCTL_HOOK_STRICT"] = self.env_strict
        e.update(CGCTL_LIBVIRT_RUN_DIR=str(self.tmp / "run"),
                 CGCTL_HOOK_RUN_DIR=str(self.tmp / "hookrun"))
        e.update(extra)
        return e

    def run(self, op, subop, stdin, shell=SH, **env):
        return subprocess.run([shell, self.script, NAME, op, subop, "-"], input=stdin,
                              capture_output=True, text=True, env=self.env(**env),
                              cwd=str(self.tmp), timeout=30)

    def logger_lines(self):
        try:
            return self.logged.read_text().splitlines()
        except FileNotFoundError:
            return []


def first_on_path(fake_dir) -> str:
    """A python wrapper script that runs ``cgctl.hook`` from ``fake_dir`` (whatever the working
    directory or PYTHONPATH), ignoring the arguments it is given."""
    import shlex
    code = (f"import runpy, sys; sys.path.insert(0, {str(fake_dir)!r}); "
            "runpy.run_module('cgctl.hook', run_name='__main__')")
    return f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(code)} \"$@\"\n"


def fake_cgctl(tmp_path, init="", hook_py=""):
    """A Python that finds a fake ``cgctl`` package first (a wrapper script, as an operator's
    own python wrapper would be); returns the command the hook is installed with."""
    pkg = tmp_path / "fake" / "cgctl"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    (pkg / "hook.py").write_text(hook_py)
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(first_on_path(tmp_path / "fake"))
    wrapper.chmod(0o755)
    return [str(wrapper), "-m", "cgctl.hook"]


def missing_interpreter(tmp_path):
    return [str(tmp_path / "venv-removed" / "bin" / "python3"), "-m", "cgctl.hook"]


def python_without_cgctl(tmp_path):
    r = subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import cgctl"], capture_output=True,
                       cwd=str(tmp_path))
    if r.returncode == 0:
        pytest.skip(f"{SYSTEM_PYTHON} has cgctl installed")
    return [SYSTEM_PYTHON, "-I", "-m", "cgctl.hook"]


def import_raises(tmp_path):
    return fake_cgctl(tmp_path, init="raise ImportError('simulated: half-upgraded cgctl')\n")


def killed_by_sigkill(tmp_path):
    return fake_cgctl(tmp_path, hook_py="import os, signal, sys\nsys.stdin.buffer.read(10)\n"
                                        "os.kill(os.getpid(), signal.SIGKILL)\n")


def killed_by_sigsegv(tmp_path):
    return fake_cgctl(tmp_path, hook_py="import os, signal\nsignal.signal(signal.SIGSEGV, "
                                        "signal.SIG_DFL)\nos.kill(os.getpid(), signal.SIGSEGV)\n")


FAULTS = {
    "missing-interpreter": (missing_interpreter, "not found (exit 127)"),
    "python-without-cgctl": (python_without_cgctl, "failed (exit 1"),
    "import-raises": (import_raises, "failed (exit 1"),
    "sigkill": (killed_by_sigkill, "killed by signal 9 (exit 137)"),
    "sigsegv": (killed_by_sigsegv, "killed by signal 11 (exit 139)"),
}


@pytest.mark.parametrize("mode", sorted(STRICTNESS))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_broken_cgctl_never_fails_a_call_but_a_strict_started(tmp_path, fault, mode):
    make, what = FAULTS[fault]
    b = Broken(tmp_path, make(tmp_path), mode)
    doc = xml(str(uuidlib.uuid4()))
    strict = mode in STRICT_MODES
    for op, subop in CALLS:
        r = b.run(op, subop, doc)
        want = 1 if (op, subop) == ("started", "begin") and strict else 0
        assert r.returncode == want, (op, subop, r.stderr)
        assert r.stdout == "", (op, subop)  # libvirt takes migrate/restore output as XML
        if (op, subop) not in HANDLED:
            assert r.stderr == "", (op, subop)
            continue
        last = r.stderr.rstrip("\n").splitlines()[-1]
        assert last.startswith(f"cgctl hook: qemu guest={NAME} op={op}: cgctl cannot run: "), last
        assert what in last, last
        assert "Traceback" not in last
        if want:
            assert last.endswith("refusing the start (hook_strict: the guest must not run "
                                 "without its limits)")
        elif op == "reconnect":
            assert last.endswith("; guest left running")
    # the same line went to syslog, once per handled call
    logged = b.logger_lines()
    assert len(logged) == len(HANDLED)
    assert all(line.startswith("-t|cgctl-hook|-p|daemon.err|cgctl hook: qemu") for line in logged)


def test_noops_never_start_python_and_read_all_of_stdin(tmp_path):
    ran = tmp_path / "ran"
    wrapper = tmp_path / "python-recording"
    wrapper.write_text(f"#!/bin/sh\necho \"$@\" >> {ran}\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    b = Broken(tmp_path, [str(wrapper), "-m", "cgctl.hook"], "baked-strict")
    big = "<domain>" + " " * (1 << 20) + "</domain>"  # far more than a pipe holds
    for op, subop in NOOPS:
        p = subprocess.Popen([SH, b.script, NAME, op, subop, "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=b.env())
        p.stdin.write(big.encode())  # BrokenPipeError if the script left without reading it
        p.stdin.close()
        assert (p.wait(timeout=30), p.stdout.read(), p.stderr.read()) == (0, b"", b""), op
        p.stdout.close()
        p.stderr.close()
    assert not ran.exists()
    # ... while the calls cgctl acts on do run it (with libvirt's arguments after the driver)
    b.run("reconnect", "begin", xml(str(uuidlib.uuid4())))
    assert ran.read_text().split()[-5:] == ["qemu", NAME, "reconnect", "begin", "-"]


def test_deliberate_refusal_is_1_only_at_started_begin(tmp_path):
    """cgctl's own refusal (its status 3 under the script) is libvirt's 1 at `started begin`,
    even when the script itself does not know the hook is strict; at any other call a 3
    cannot be a refusal and is a failure like any other: exit 0."""
    b = Broken(tmp_path, fake_cgctl(tmp_path, hook_py="import sys\nsys.exit(3)\n"), "default")
    doc = xml(str(uuidlib.uuid4()))
    for op, subop in HANDLED:
        r = b.run(op, subop, doc)
        if (op, subop) == ("started", "begin"):
            assert (r.returncode, r.stderr) == (1, "")  # cgctl has said why itself
        else:
            assert r.returncode == 0 and "failed (exit 3" in r.stderr


def test_the_real_hook_refuses_through_the_script_and_says_why(tmp_path):
    """The real cgctl, strict, a guest whose config cannot be applied (not running)."""
    from cgctl.core.journal import Journal
    uuid = str(uuidlib.uuid4())
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    b = Broken(tmp_path, [sys.executable, "-m", "cgctl.hook"], "config-strict")
    with Journal(str(tmp_path / "journal.db")) as j, j.transaction() as tx:
        tx.set_config(uuid, NAME, "qemu", {("hard_limit", ""): "1073741824"})
    r = b.run("started", "begin", xml(uuid))
    assert r.returncode == 1 and "refusing the start" in r.stderr
    assert "cannot run" not in r.stderr  # a refusal, not a broken install
    r = b.run("reconnect", "begin", xml(uuid))
    assert (r.returncode, r.stdout) == (0, "")


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf", "-1", "0", "1e400", "5s"])
def test_a_bad_timeout_in_the_environment_is_not_an_exit_path(tmp_path, value):
    uuid = str(uuidlib.uuid4())
    b = Broken(tmp_path, [sys.executable, "-m", "cgctl.hook"], "baked-strict")
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    for name in ("CGCTL_HOOK_TIMEOUT", "CGCTL_HOOK_EARLY_TIMEOUT"):
        for op in ("reconnect", "started"):
            r = b.run(op, "begin", xml(uuid), **{name: value})
            assert (r.returncode, r.stdout) == (0, ""), r.stderr  # nothing configured: fine
            assert "cannot run" not in r.stderr and "Traceback" not in r.stderr
            if value.strip():
                assert f"{name}={value!r} is not a number of seconds" in r.stderr


def test_timeouts_fall_back_to_the_defaults_with_one_line(monkeypatch):
    msgs = []
    monkeypatch.setenv("CGCTL_HOOK_TIMEOUT", "2.5")
    monkeypatch.setenv("CGCTL_HOOK_EARLY_TIMEOUT", "1e9")
    assert options.timeouts(lambda m, error=False: msgs.append(m)) == (2.5, options.EARLY_TIMEOUT)
    assert len(msgs) == 1 and "CGCTL_HOOK_EARLY_TIMEOUT='1e9'" in msgs[0]
    monkeypatch.delenv("CGCTL_HOOK_TIMEOUT")
    assert options.timeouts()[0] == options.HOOK_TIMEOUT


@pytest.mark.skipif(not shutil.which("dash"), reason="no dash")
def test_the_script_is_posix_sh(tmp_path):
    """dash -n parses it; and the same outcomes under dash itself and under bash --posix."""
    b = Broken(tmp_path, missing_interpreter(tmp_path), "config-strict")
    assert subprocess.run(["dash", "-n", b.script]).returncode == 0
    shells = ["dash"] + (["bash"] if shutil.which("bash") else [])
    for shell in shells:
        argv0 = [shell] if shell == "dash" else [shell, "--posix"]
        for op, subop in CALLS:
            r = subprocess.run([*argv0, b.script, NAME, op, subop, "-"], input="<domain/>",
                               capture_output=True, text=True, env=b.env(), timeout=30)
            want = 1 if (op, subop) == ("started", "begin") else 0
            assert (r.returncode, r.stdout) == (want, ""), (shell, op, r.stderr)


def test_logger_missing_is_fine(tmp_path):
    b = Broken(tmp_path, missing_interpreter(tmp_path), "default")
    only = tmp_path / "only"
    only.mkdir()
    for tool in ("cat", "sed"):  # what the script uses besides the shell, but no logger
        os.symlink(shutil.which(tool), only / tool)
    r = b.run("reconnect", "begin", "<domain/>", PATH=str(only))
    assert r.returncode == 0 and r.stderr.endswith("; guest left running\n")
    assert "logger: not found" not in r.stderr and len(r.stderr.splitlines()) == 2  # sh, ours


def test_the_working_directory_cannot_choose_the_code(tmp_path):
    """libvirtd's working directory is not ours: a ``cgctl`` package there (``python -m``
    puts the working directory first on sys.path) is not what runs."""
    trap = tmp_path / "cwd" / "cgctl"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise ImportError('the cwd was imported')\n")
    (trap / "hook.py").write_text("")
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    b = Broken(tmp_path, [sys.executable, "-m", "cgctl.hook"], "baked-strict")
    r = subprocess.run([SH, b.script, NAME, "started", "begin", "-"], input="<domain/>",
                       capture_output=True, text=True, env=b.env(), cwd=str(trap.parent),
                       timeout=30)
    assert "the cwd was imported" not in r.stderr and "cannot run" not in r.stderr, r.stderr
