"""`prepare begin` without the service (cgctl/hook/early.py, `launch`): the process libvirt waits
for decides and forks only; the configuration file, the domain's metadata, the journal and the
controller are the detached child's; the guest's lock is held when the call returns
(docs/hook.md, "What `prepare begin` does before libvirt goes on")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from cgctl.core.journal import Journal
from cgctl.model import metadata as M

from tests.unit.test_hook import NAME, configure, env, uuid, xml  # noqa: F401  (fixtures)
from tests.unit.test_metadata import T1, UUID, doc_xml

# what deciding does not need: each costs the call libvirt waits for milliseconds
NOT_IN_THE_PARENT = ("libvirt", "sqlite3", "tomllib", "cgctl.config", "cgctl.core.controller",
                     "cgctl.core.journal", "cgctl.model.metadata", "cgctl.core.travel",
                     "xml.etree.ElementTree", "cgctl.host.runfiles")


def _prepare_in_subprocess(env, name, stdin, out):
    """``prepare begin`` through main() in a fresh interpreter; writes what the parent imported
    of NOT_IN_THE_PARENT and whether the guest's lock was held when main() returned."""
    lock = os.path.join(env["CGCTL_HOOK_RUN_DIR"], f"early-qemu-{name}.lock")
    code = ("import sys, fcntl, os, cgctl.hook.main as h;"
            f"rc = h.main(['qemu', {name!r}, 'prepare', 'begin', '-']);"
            f"fd = os.open({lock!r}, os.O_RDWR);"
            "held = False\n"
            "try:\n"
            "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
            "except BlockingIOError:\n"
            "    held = True\n"
            f"bad = sorted(m for m in sys.modules if m in {NOT_IN_THE_PARENT!r});"
            f"open({str(out)!r}, 'w').write(repr((rc, bad, held)))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          input=stdin, timeout=30)


def _applier_pid(env, name):
    from tests.unit.conftest import applier_pid
    return applier_pid(env["CGCTL_HOOK_RUN_DIR"], name)


def test_the_parent_imports_only_what_deciding_needs_and_returns_holding_the_lock(env, uuid,
                                                                                tmp_path):
    configure(env, uuid, hard_limit="1073741824")
    (tmp_path / "cgctl.toml").write_text("hook_strict = false\n")  # read by the child only
    out = tmp_path / "parent"
    e = dict(env, CGCTL_HOOK_EARLY_TIMEOUT="30")
    r = _prepare_in_subprocess(e, NAME, xml(uuid), out)
    pid = _applier_pid(env, NAME)
    try:
        assert out.read_text() == repr((0, [], True)), r.stderr
        assert pid != os.getpid() and os.path.exists(f"/proc/{pid}")  # the detached child
    finally:
        os.kill(pid, signal.SIGTERM)


def test_the_child_takes_the_metadata_into_the_journal(tmp_path):
    """With early apply on (the default), the settings carried in the domain XML reach the
    journal from the detached child, as they did from the hook process."""
    env = dict(os.environ, CGCTL_LIBVIRT_RUN_DIR=str(tmp_path / "run"),
               CGCTL_HOOK_RUN_DIR=str(tmp_path / "hookrun"), CGCTL_CONFIG=str(tmp_path / "c"),
               CGCTL_JOURNAL=str(tmp_path / "j.db"), CGCTL_HOOK_EARLY_TIMEOUT="0.5")
    (tmp_path / "run" / "qemu").mkdir(parents=True)
    doc = doc_xml({("hard_limit", ""): M.Entry("1G", T1, "hosta", "root(0)")})
    out = tmp_path / "parent"
    r = _prepare_in_subprocess(env, "g1", doc, out)
    rc, bad, _held = eval(out.read_text())
    assert (rc, bad) == (0, []), r.stderr
    end = time.monotonic() + 10
    got = {}
    while time.monotonic() < end:
        if os.path.exists(env["CGCTL_JOURNAL"]):
            with Journal(env["CGCTL_JOURNAL"]) as j:
                got = j.get_config(UUID)
            if got:
                break
        time.sleep(0.05)
    assert got == {("hard_limit", ""): "1G"}


def test_early_apply_off_in_the_config_file_is_obeyed_by_the_child(env, uuid, tmp_path):
    """The configuration file is read after the fork: `hook_early_apply = false` there still
    means no early apply (the child lets go of the lock at once, applying nothing)."""
    configure(env, uuid, hard_limit="1073741824")
    (tmp_path / "cgctl.toml").write_text("hook_early_apply = false\n")
    lock = os.path.join(env["CGCTL_HOOK_RUN_DIR"], f"early-qemu-{NAME}.lock")
    r = subprocess.run([sys.executable, "-m", "cgctl.hook", "qemu", NAME, "prepare", "begin",
                        "-"], input=xml(uuid), capture_output=True, text=True,
                       env=dict(env, CGCTL_HOOK_EARLY_TIMEOUT="30"), timeout=30)
    assert r.returncode == 0, r.stderr
    end = time.monotonic() + 10
    while os.path.exists(lock) and time.monotonic() < end:
        time.sleep(0.02)
    assert not os.path.exists(lock)  # an applier would hold it for its 30 s
    with Journal(env["CGCTL_JOURNAL"]) as j:
        assert [h.command for h in j.history(uuid) if h.command.startswith("hook")] == []


def test_the_installed_command_runs_the_hook_without_runpy(env, uuid):
    """The script's Python runs `-c ENTRY`, not `-m cgctl.hook` (runpy's imports cost every
    call libvirt waits for ~4 ms); the hook still answers through it."""
    from cgctl.hook import install as hookinstall
    from cgctl.start.options import Options
    cmd = hookinstall.hook_command(sys.executable, Options())
    r = subprocess.run([*cmd, "qemu", NAME, "started", "begin", "-"], input=xml(uuid),
                       capture_output=True, text=True, cwd="/", timeout=30,
                       env=dict(env, PYTHONPROFILEIMPORTTIME="1"))
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if "|" in ln}
    assert r.returncode == 0 and "cgctl.hook.main" in imported, r.stderr
    assert "runpy" not in imported


def _with_elementtree(doc: bytes):
    """What parse_domain_xml returned when it used ElementTree (its code before expat)."""
    import xml.etree.ElementTree as ET
    from cgctl.model.units import normalize_uuid
    try:
        root = ET.fromstring(doc)
    except ET.ParseError:
        return "malformed"
    if root.tag == "domstatus":
        root = root.find("domain") if root.find("domain") is not None else root
    if root.tag != "domain":
        return "not a domain"
    uuid = normalize_uuid((root.findtext("uuid") or "").strip())
    if not uuid:
        return "no uuid"
    vcpus = 0
    v = root.find("vcpu")
    if v is not None:
        try:
            vcpus = int(v.get("current") or (v.text or "0").strip())
        except ValueError:
            vcpus = 0
    return ((root.findtext("name") or "").strip(), uuid, vcpus)


U = "6b1c1b8e-2f57-4d2a-9b7a-1a2b3c4d5e6f"
DOCS = [
    f"<domain type='kvm'><name>g</name><uuid>{U}</uuid><vcpu>2</vcpu></domain>",
    f"<domain><name> g </name><uuid>{U.upper()}</uuid><vcpu current='3'>4</vcpu></domain>",
    f"<domain><vcpu current=''>x</vcpu><uuid>{U}</uuid></domain>",
    f"<domain><uuid>{U}</uuid><vcpu>  </vcpu><vcpu>5</vcpu><name>a</name><name>b</name></domain>",
    f"<domain><devices><name>inner</name><uuid>{U}</uuid></devices><uuid>{U}</uuid></domain>",
    f"<domain><name>a<b/>tail</name><uuid>{U}</uuid></domain>",
    f"<domstatus><domain><name>s</name><uuid>{U}</uuid><vcpu>1</vcpu></domain></domstatus>",
    f"<domstatus pid='1'><uuid>{U}</uuid></domstatus>",
    f"<domain xmlns='urn:x'><name>g</name><uuid>{U}</uuid></domain>",
    f"<x:domain xmlns:x='urn:x'><uuid>{U}</uuid></x:domain>",
    f"<domain><name>&amp;&lt;</name><uuid><![CDATA[{U}]]></uuid></domain>",
    f"<domain><uuid>{U}x</uuid></domain>",
    "<domain><name>g</name></domain>",
    "<network><name>default</name></network>",
    "<domain><name>",
    "<domain>&undefined;</domain>",
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
    f"<domain><name>&b;</name><uuid>{U}</uuid></domain>",
    '<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    f"<domain><name>&e;</name><uuid>{U}</uuid></domain>",
]


def test_the_expat_parse_takes_what_elementtree_took():
    """parse_domain_xml reads with expat (no ElementTree import in the process libvirt waits
    for): the same facts, or a refusal, for the same documents."""
    from cgctl.start import domain
    from cgctl.start.options import HookFailure
    for doc in DOCS:
        want = _with_elementtree(doc.encode())
        try:
            i = domain.parse_domain_xml(doc.encode())
            got = (i.name, i.uuid, i.vcpus)
        except HookFailure as exc:
            got = str(exc)
        if isinstance(want, tuple):
            assert got == want, doc
        else:
            assert isinstance(got, str) and want.split()[-1] in got, (doc, got)
