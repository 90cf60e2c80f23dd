"""A wheel installed with the oldest Python pyproject.toml claims (3.9) runs the service: the wheel
built from this checkout, installed with its declared dependencies and the `libvirt` extra into a
fresh Python 3.9 venv (what `pip install 'cgctl[libvirt]'` gives a user on Debian 11 or RHEL 9),
and that venv's own `bin/cgctl daemon`, started away from the checkout, puts a guest's config in
force when the guest starts on the real libvirtd sandbox. Skips (loudly) only when this machine
has no Python 3.9; pip builds libvirt-python for it once (about a minute), then from its cache.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest

from tests.daemonkit import Subprocess, shares, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OLDEST = "3.9"
SHARES = "733"


def find_python(version: str):
    """As scripts/pythons.sh finds it: pyenv's, else on PATH."""
    root = os.environ.get("PYENV_ROOT", "/root/.pyenv")
    for p in sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}")) + \
            [shutil.which(f"python{version}") or ""]:
        if p and os.access(p, os.X_OK) and subprocess.run([p, "-c", "pass"]).returncode == 0:
            return p
    return None


def run(*argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))} -> {r.returncode}:\n{r.stdout}{r.stderr}"
    return r


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    py = find_python(OLDEST)
    if not py:
        pytest.skip(f"NO PYTHON {OLDEST} ON THIS MACHINE: the wheel was NOT tested on the oldest "
                    f"supported Python (pyenv install {OLDEST})")
    d = tmp_path_factory.mktemp("wheel-py39")
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", d / "dist", ROOT)
    [whl] = glob.glob(str(d / "dist" / "cgctl-*.whl"))
    run(py, "-m", "venv", d / "venv")
    # the declared dependencies only (pyudev, tomli before 3.11) and the libvirt extra
    run(d / "venv/bin/pip", "install", "-q", "--disable-pip-version-check", f"{whl}[libvirt]")
    return d / "venv"


def in_venv(venv, journal, *args):
    """The venv's installed cgctl, from a directory without the checkout's code in it."""
    return run(venv / "bin/cgctl", "--journal", journal, *args, cwd=str(venv),
               env={"PATH": "/usr/bin:/bin", "CGCTL_NO_SERVICE": "1"})


def test_the_venv_is_python_39_with_cgctl_from_the_wheel(venv):
    r = run(venv / "bin/python", "-c", "import sys, cgctl, libvirt; print(sys.version_info[:2], "
            "cgctl.__file__)", cwd=str(venv))
    assert r.stdout.startswith("(3, 9) ") and str(venv) in r.stdout, r.stdout
    r = run(venv / "bin/cgctl", "--version", cwd=str(venv))
    assert f"Python {OLDEST}." in r.stdout, r.stdout


def test_the_service_from_the_py39_wheel_applies_a_config_at_start(venv, libvirt_sandbox, make_guest,
                                                                   tmp_path):
    journal = tmp_path / "journal.db"
    conf = tmp_path / "cgctl.toml"   # read with tomli: Python 3.9 has no tomllib
    conf.write_text('uris = ["qemu:///system"]\n')
    g = make_guest("qemu", start=False)
    in_venv(venv, journal, "set", g.name, f"cpu_shares={SHARES}", "--config")
    svc = Subprocess(["--journal", str(journal), "--config-file", str(conf)],
                     log_path=tmp_path / "daemon.log", command=[str(venv / "bin/cgctl")],
                     cwd=str(venv))
    try:
        svc.wait_log("ready:", timeout=60)
        assert os.path.realpath(f"/proc/{svc.pid}/exe").startswith(os.path.realpath(
            os.path.dirname(find_python(OLDEST))))   # the 3.9 interpreter runs it
        libvirt_sandbox.start_guest(g.name, g.uri)
        wait_for(lambda: shares(g) == SHARES, 60, f"cpu.shares of {g.name} = {SHARES} "
                 f"(it is {shares(g)}); daemon log:\n{svc.log()}")
        svc.wait_log(f"guest={g.name} applied source=event")
    finally:
        code = svc.stop()
        print(svc.log())
    assert code == 0
    rows = in_venv(venv, journal, "--json", "history", g.name).stdout
    assert '"event"' in rows, rows
