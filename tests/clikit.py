"""The real `cgctl` command as tests run it: a subprocess of this interpreter, own journal."""

from __future__ import annotations

import subprocess
import sys

CGCTL = [sys.executable, "-m", "cgctl.cli"]


def cgctl(journal, *args, check=True, env=None) -> subprocess.CompletedProcess:
    """``cgctl --journal JOURNAL ARGS...``; with ``check``, a non-zero exit fails the test."""
    r = subprocess.run(CGCTL + ["--journal", str(journal), *args], capture_output=True,
                       text=True, timeout=60, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"cgctl {' '.join(args)} -> {r.returncode}: {r.stderr}")
    return r
