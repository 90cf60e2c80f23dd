"""The start without Python (docs/hook.md, "The start without Python"): the installed script's
fast paths, the applier's waits on inotify (cgctl/start/applier.py) and the service's side of the
hand-off (cgctl/start/handoff.py), on real files, real flock(2) locks and real inotify.

The script is cgctl's real one (``hookinstall.install``) run with ``/bin/sh``, ``dash`` and
``bash --posix`` as libvirt runs it, with a Python wrapper that records every call it is given:
a fast path is one where the wrapper never ran. An "applier" here is the test holding the
guest's lock file as the real one does (flock), or the real ``early.serve`` in a thread.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid as uuidlib

import pytest

from cgctl import consts
from cgctl.hook import install as hookinstall
from cgctl.start import applier as early, handoff, options

NAME = "cgt-fast"
UUID = str(uuidlib.UUID(int=0x5EED))
XML = (f"<domain type='qemu'><name>{NAME}</name><uuid>{UUID}</uuid><vcpu>1</vcpu>\n"
       + "<!-- padding -->\n" * 200 + "</domain>\n")
SHELLS = [["/bin/sh"]] + ([["dash"]] if shutil.which("dash") else []) + \
    ([["bash", "--posix"]] if shutil.which("bash") else [])

pytestmark = pytest.mark.skipif(not shutil.which("flock"), reason="no flock(1)")


@pytest.fixture
def hook(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(consts, "HOOK_RUN_DIR", str(run))
    ran = tmp_path / "ran"
    wrapper = tmp_path / "python-recording"
    wrapper.write_text(f"#!/bin/sh\necho \"$*\" >> {ran}\nexec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    opts = options.Options()
    opts.journal = str(tmp_path / "journal.db")
    opts.config_file = str(tmp_path / "none.toml")
    hookinstall.install(str(tmp_path / "hooks"), [str(wrapper), "-m", "cgctl.hook", *opts.argv()],
                        drivers=("qemu",), opts=opts)
    (tmp_path / "lvrun" / "qemu").mkdir(parents=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CGCTL_HOOK_RUN_DIR": str(run),
           "CGCTL_LIBVIRT_RUN_DIR": str(tmp_path / "lvrun"),
           "CGCTL_HOOK_EARLY_TIMEOUT": "1"}  # an applier Python launches here leaves soon

    class Hook:
        script = str(tmp_path / "hooks" / "qemu.d" / hookinstall.SCRIPT_NAME)
        journal = opts.journal

        def run(self, op, subop, shell=("/bin/sh",), name=NAME, stdin=XML, **extra):
            return subprocess.run([*shell, self.script, name, op, subop, "-"], input=stdin,
                                  capture_output=True, text=True, env=dict(env, **extra),
                                  timeout=30)

        def python_ran(self):
            try:
                return [" ".join(line.split()[-3:-1]) for line in ran.read_text().splitlines()]
            except FileNotFoundError:
                return []

        def reset(self):
            if ran.exists():
                ran.unlink()
    h = Hook()
    h.run_dir = run
    return h


def hold(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_start_begin_while_an_applier_holds_the_lock_starts_no_python(hook, shell):
    fd = hold(early.lock_path("qemu", NAME))
    try:
        for op in ("prepare", "start"):
            r = hook.run(op, "begin", shell)
            assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    finally:
        os.close(fd)
    assert hook.python_ran() == []
    # the lock file still there but no one holds it (an applier that died): Python again
    r = hook.run("start", "begin", shell)
    assert r.returncode == 0 and hook.python_ran() == ["start begin"]


def answer_with(path_result, text_for):
    """An applier: holds the lock, waits for the go file, writes the result, lets go."""
    fd = hold(early.lock_path("qemu", NAME))
    ready = threading.Event()

    def run():
        try:
            ready.set()
            go = early.go_path("qemu", NAME)
            end = time.monotonic() + 20
            token = ""
            while not token and time.monotonic() < end:  # created, then written: its token
                time.sleep(0.005)
                try:
                    with open(go) as f:
                        token = f.read().strip()
                except FileNotFoundError:
                    pass
            with open(path_result, "w") as f:
                f.write(text_for(token) + "\n")
        finally:
            os.unlink(early.lock_path("qemu", NAME))
            os.close(fd)
    t = threading.Thread(target=run)
    t.start()
    ready.wait()
    return t


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_started_begin_answered_by_the_applier_starts_no_python(hook, shell):
    t = answer_with(early.result_path("qemu", NAME), lambda token: f"ok {token}")
    r = hook.run("started", "begin", shell)
    t.join()
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert hook.python_ran() == []


@pytest.mark.parametrize("answer", ["fail {token} 1 setting(s) not applied", "ok 1",
                                   "ok", ""])
def test_started_begin_without_an_ok_for_its_token_runs_python(hook, answer):
    """A failure, another call's token, a stale result: the hook in Python decides, as always
    (here: nothing configured, exit 0)."""
    t = answer_with(early.result_path("qemu", NAME), lambda token: answer.format(token=token))
    r = hook.run("started", "begin")
    t.join()
    assert r.returncode == 0 and hook.python_ran() == ["started begin"]


def test_started_begin_with_a_stale_result_and_no_applier_runs_python(hook):
    open(early.lock_path("qemu", NAME), "w").close()  # left by an applier killed by SIGKILL
    with open(early.result_path("qemu", NAME), "w") as f:
        f.write(f"ok {os.getpid()}\n")
    r = hook.run("started", "begin")
    assert r.returncode == 0 and hook.python_ran() == ["started begin"]


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_prepare_begin_hands_the_start_to_a_running_service(hook, shell):
    r = hook.run("prepare", "begin", shell, CGCTL_HOOK_EARLY_APPLY="no")  # no service: Python
    assert r.returncode == 0 and hook.python_ran() == ["prepare begin"]
    hook.reset()
    h = handoff.Handoff(str(hook.run_dir))
    assert h.open()
    try:
        r = hook.run("prepare", "begin", shell)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        req = hook.run_dir / f"{options.REQUEST_PREFIX}qemu-{NAME}"
        fields, xml = handoff.parse_request(req.read_bytes())
        assert xml.decode() == XML  # every byte of the domain XML
        assert fields["journal"] == hook.journal and fields["strict"] == ""
        assert hook.python_ran() == []
        # the service did not take it: `start begin` takes it back and runs the hook itself
        r = hook.run("start", "begin", shell)
        assert r.returncode == 0 and not req.exists()
        assert hook.python_ran() == ["start begin"]
    finally:
        h.close()


@pytest.mark.parametrize("name", ["../etc", "a/b", ".", ""])
def test_names_that_are_paths_never_take_a_fast_path(hook, name):
    h = handoff.Handoff(str(hook.run_dir))
    assert h.open()
    try:
        r = hook.run("prepare", "begin", name=name)
    finally:
        h.close()
    assert r.returncode == 0 and hook.python_ran() == ["prepare begin"]
    assert [p for p in os.listdir(hook.run_dir) if p.startswith(options.REQUEST_PREFIX)] == []


def test_noops_read_stdin_without_a_process(hook):
    r = hook.run("release", "end", stdin="<domain>" + "x" * (1 << 20) + "</domain>")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    text = open(hook.script).read()
    noop = text[text.index('case "$2 $3" in'):text.index("\nesac\n")]
    assert "cat" not in noop and "drain" in noop


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_release_end_removes_the_go_and_result_files_without_python(hook, shell):
    for p in (early.go_path("qemu", NAME), early.result_path("qemu", NAME)):
        with open(p, "w") as f:
            f.write("ok 1\n")
    other = early.result_path("qemu", "other")  # another guest's: kept
    open(other, "w").close()
    for call in (("stopped", "end"), ("release", "end")):
        r = hook.run(*call, shell)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert sorted(os.listdir(hook.run_dir)) == [os.path.basename(other)]
    assert hook.python_ran() == []
    r = hook.run("release", "end", shell)  # nothing left: nothing to do, still 0
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_release_end_leaves_the_files_of_a_start_in_progress(hook):
    """An applier holds the guest's lock (a new start began): its files are its own."""
    fd = hold(early.lock_path("qemu", NAME))
    try:
        with open(early.go_path("qemu", NAME), "w") as f:
            f.write("7\n")
        r = hook.run("release", "end")
        assert r.returncode == 0 and os.path.exists(early.go_path("qemu", NAME))
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["../run", "a/b", ".", ""])
def test_release_end_never_removes_by_a_name_that_is_a_path(hook, name):
    outside = hook.run_dir.parent / "early-qemu-x.go"
    outside.write_text("keep")
    (hook.run_dir / "early-qemu-..go").write_text("keep")
    r = hook.run("release", "end", name=name)
    assert r.returncode == 0 and outside.read_text() == "keep"
    assert (hook.run_dir / "early-qemu-..go").read_text() == "keep"


# --------------------------------------------------------------------------- the applier's waits

class FakeCtl:
    host = None
    lock_wait = 5.0

    def __init__(self, run_dir, config):
        self.run_dir = run_dir
        self.config = config
        self.applied = []

    def journal(self, create=True):
        return None

    def effective(self, uuid, journal=None):
        class E:
            config = self.config
        return E()

    def apply_config(self, guest, *, command, **kw):
        self.applied.append(command)

        class O:
            changes, errors = [1], []
        return O()


@pytest.fixture
def waiter(tmp_path, monkeypatch):
    run = tmp_path / "run"
    lv = tmp_path / "lvrun"
    for d in (run, lv / "qemu"):
        d.mkdir(parents=True)
    monkeypatch.setattr(consts, "HOOK_RUN_DIR", str(run))
    from cgctl.host import runfiles
    guest = runfiles.Guest(name=NAME, uuid=UUID, driver="qemu", uri="qemu:///system",
                           running=True, persistent=True, pid=os.getpid())
    ready = lv / "qemu" / f"{NAME}.xml"
    # the guest is "ready" once libvirt's status file is there (the real test: verified pid,
    # groups, vcpuN; cgctl/host/runfiles.py); only the wake-ups are tested here
    monkeypatch.setattr(early, "_ready", lambda *a: guest if ready.exists() else None)
    monkeypatch.setattr(runfiles, "find_running", lambda *a, **k: guest)
    return str(lv), ready


def serve_in_thread(ctl, **kw):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("what", early.serve(
        ctl, "qemu", NAME, UUID, 1, time.monotonic() + 20, lambda *a, **k: None,
        recheck=3600, **kw)))
    t.start()
    return t, out


def test_the_applier_is_woken_by_inotify_not_by_a_timer(waiter):
    """With the re-check at an hour, only inotify can wake it: the run file's creation (early
    apply), then the go file (the answer); a timer would end it at its deadline instead."""
    lv, ready = waiter
    ctl = FakeCtl(lv, {("cpu_shares", ""): "512"})
    t, out = serve_in_thread(ctl)
    time.sleep(0.2)
    ready.write_text("<domstatus/>")
    while "hook early" not in ctl.applied and t.is_alive():
        time.sleep(0.01)
    with open(early.go_path("qemu", NAME), "w") as f:
        f.write("4242\n")
    t.join(30)
    assert ctl.applied == ["hook early", "hook started"]
    assert "started: 1 setting(s) applied" in out["what"]
    with open(early.result_path("qemu", NAME)) as f:
        assert f.read() == "ok 4242\n"


class JournalCtl(FakeCtl):
    """FakeCtl whose apply records into a real SQLite journal through the batch it is given,
    and notes, when the record is written, what the script could see by then."""

    def __init__(self, run_dir, config, journal):
        super().__init__(run_dir, config)
        self.j = journal
        self.at_commit = None

    def journal(self, create=True):
        return self.j

    def apply_config(self, guest, *, command, batch=None, **kw):
        out = super().apply_config(guest, command=command)
        if batch is None:
            return out
        batch.lock(guest.uuid, guest.name, 1.0)

        def record(tx):
            result = early.result_path("qemu", NAME)
            self.at_commit = (open(result).read() if os.path.exists(result) else None,
                              os.path.exists(early.lock_path("qemu", NAME)))
            tx.set_instance(guest.uuid, 4321, 1.5, applied_at=2.0)
        batch.add(record, lambda: None)
        return out


def test_the_answer_comes_before_the_commit(waiter, tmp_path):
    """The script is answered (result written, the guest's lock file let go) before the
    journal's commit; the record is committed right after, and held the guest's lock until
    then (cgctl/core/batch.py)."""
    from cgctl.core import guestlock
    from cgctl.core.journal import Journal
    lv, _ready = waiter
    with Journal(str(tmp_path / "j.db")) as j:
        ctl = JournalCtl(lv, {("cpu_shares", ""): "512"}, j)
        fd = early.take("qemu", NAME)
        held = early.Held("qemu", NAME, fd)
        with open(early.go_path("qemu", NAME), "w") as f:
            f.write("99\n")
        try:
            what = early.serve(ctl, "qemu", NAME, UUID, 1, time.monotonic() + 20,
                               lambda *a, **k: None, early=False, let_go=held.let_go)
        finally:
            held.let_go()
        assert "started: 1 setting(s) applied" in what
        assert ctl.at_commit == ("ok 99\n", False)  # answered and let go, then recorded
        assert j.get_instance(UUID).pid == 4321
    with guestlock.hold(UUID, wait=0, guest=NAME):  # the batch let go of the guest's lock
        pass


def test_nothing_configured_answers_ok_without_applying(waiter):
    lv, _ready = waiter
    ctl = FakeCtl(lv, {})
    t, out = serve_in_thread(ctl)
    with open(early.go_path("qemu", NAME), "w") as f:
        f.write("7\n")
    t.join(30)
    assert ctl.applied == [] and out["what"] == "nothing in the journal"
    with open(early.result_path("qemu", NAME)) as f:
        assert f.read() == "ok 7\n"


def test_take_removes_what_an_earlier_start_left(waiter):
    for p in (early.go_path("qemu", NAME), early.result_path("qemu", NAME)):
        with open(p, "w") as f:
            f.write("ok 1\n")
    fd = early.take("qemu", NAME)
    try:
        assert early.take("qemu", NAME) is None  # one applier per guest
        assert not os.path.exists(early.go_path("qemu", NAME))
        assert not os.path.exists(early.result_path("qemu", NAME))
    finally:
        early.release("qemu", NAME, fd)
    assert not os.path.exists(early.lock_path("qemu", NAME))


def test_the_service_takes_a_request_and_serves_it(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(consts, "HOOK_RUN_DIR", str(run))
    h = handoff.Handoff(str(run))
    assert h.open()
    assert not handoff.Handoff(str(run)).open()  # a second service: the lock is held
    seen = {}

    def fake_serve(ctl, driver, name, uuid, vcpus, deadline, log, overlay=None, early_on=True,
                   let_go=None):
        seen.update(driver=driver, name=name, uuid=uuid, early=early_on,
                    locked=os.path.exists(early.lock_path(driver, name)),
                    journal=ctl.journal_path)
        return "served"
    monkeypatch.setattr(early, "serve", fake_serve)
    try:
        req = run / f"{options.REQUEST_PREFIX}qemu-{NAME}"
        req.write_text(f"journal={tmp_path / 'j.db'}\nconfig={tmp_path / 'none.toml'}\n"
                       f"strict=\nearly=no\n\n{XML}")
        threads = []
        while not threads:
            threads = h.poll_once(5)
        for t in threads:
            t.join(30)
    finally:
        h.close()
    assert seen == {"driver": "qemu", "name": NAME, "uuid": UUID, "early": False,
                    "locked": True, "journal": str(tmp_path / "j.db")}
    assert not req.exists() and not os.path.exists(early.lock_path("qemu", NAME))


@pytest.mark.parametrize("data", [b"", b"journal=x\n<domain/>", b"bogus=1\n\n<domain/>"])
def test_a_bad_request_is_refused(data):
    with pytest.raises(ValueError):
        handoff.parse_request(data)


# Locks the shell tests (docs/hook.md): a holder names itself ("PID TICKS") in its lock file,
# and the script believes a live holder without starting flock(1); any doubt asks flock(1).

@pytest.fixture
def flock_calls(tmp_path):
    """A PATH whose flock(1) records each call, then runs the real one."""
    d = tmp_path / "recbin"
    d.mkdir()
    log = tmp_path / "flock-calls"
    (d / "flock").write_text(f"#!/bin/sh\necho \"$*\" >> {log}\nexec {shutil.which('flock')} \"$@\"\n")
    (d / "flock").chmod(0o755)

    class Calls:
        path = f"{d}:/usr/sbin:/usr/bin:/sbin:/bin"

        def __call__(self):
            return log.read_text().splitlines() if log.exists() else []
    return Calls()


def hold_named(path, line=None):
    """The lock held as an applier holds it: flock, then its holder line written."""
    fd = hold(path)
    os.write(fd, early.holder_line() if line is None else line)
    return fd


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_named_live_holder_is_seen_without_flock_or_python(hook, shell, flock_calls):
    fd = hold_named(early.lock_path("qemu", NAME))
    try:
        for op in ("prepare", "start"):
            r = hook.run(op, "begin", shell, PATH=flock_calls.path)
            assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    finally:
        os.close(fd)
    assert hook.python_ran() == [] and flock_calls() == []


@pytest.mark.parametrize("line", [b"", b"garbage\n", b"999999999 1\n", b"%d 1\n" % os.getpid()],
                         ids=["empty", "garbage", "dead-pid", "reused-pid"])
def test_a_lock_file_that_names_no_live_holder_is_asked_of_flock(hook, flock_calls, line):
    path = early.lock_path("qemu", NAME)
    fd = hold_named(path, line)  # held, but the file does not name its holder (yet)
    try:
        r = hook.run("start", "begin", PATH=flock_calls.path)
    finally:
        os.close(fd)
    assert r.returncode == 0 and hook.python_ran() == [] and len(flock_calls()) == 1
    # the same file, no one holding it (an applier killed; a PID reused): Python applies
    r = hook.run("start", "begin", PATH=flock_calls.path)
    assert r.returncode == 0 and hook.python_ran() == ["start begin"]
    assert len(flock_calls()) == 2


def test_no_lock_file_is_no_holder_without_a_process(hook, flock_calls):
    r = hook.run("start", "begin", PATH=flock_calls.path)
    assert r.returncode == 0 and hook.python_ran() == ["start begin"] and flock_calls() == []


def test_the_holder_line_is_pid_and_start_ticks_and_goes_before_the_lock(waiter):
    fd = early.take("qemu", NAME)
    path = early.lock_path("qemu", NAME)
    pid, ticks = open(path).read().split()
    with open(f"/proc/{os.getpid()}/stat") as f:
        assert (int(pid), ticks) == (os.getpid(), f.read().rsplit(")", 1)[1].split()[19])
    keep = os.open(path, os.O_RDONLY)  # the inode, to see what was left in it
    try:
        early.Held("qemu", NAME, fd).let_go()
        assert not os.path.exists(path) and os.fstat(keep).st_size == 0
    finally:
        os.close(keep)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_the_service_is_seen_without_flock_and_not_after_it_closed(hook, shell, flock_calls):
    h = handoff.Handoff(str(hook.run_dir))
    assert h.open()
    req = hook.run_dir / f"{options.REQUEST_PREFIX}qemu-{NAME}"
    try:
        r = hook.run("prepare", "begin", shell, PATH=flock_calls.path)
        assert (r.returncode, r.stderr) == (0, "") and req.exists()
        assert hook.python_ran() == [] and flock_calls() == []
    finally:
        h.close()
    req.unlink()
    assert (hook.run_dir / options.SERVICE_LOCK).read_bytes() == b""  # emptied at close
    r = hook.run("prepare", "begin", shell, PATH=flock_calls.path, CGCTL_HOOK_EARLY_APPLY="no")
    assert r.returncode == 0 and not req.exists() and hook.python_ran() == ["prepare begin"]


def test_a_service_lock_naming_a_reused_pid_is_no_service(hook):
    # a service killed (-9) whose PID now belongs to another process: the hook works alone
    (hook.run_dir / options.SERVICE_LOCK).write_text(f"{os.getpid()} 1\n")
    r = hook.run("prepare", "begin", CGCTL_HOOK_EARLY_APPLY="no")
    assert r.returncode == 0 and hook.python_ran() == ["prepare begin"]
    assert [p for p in os.listdir(hook.run_dir) if p.startswith(options.REQUEST_PREFIX)] == []
