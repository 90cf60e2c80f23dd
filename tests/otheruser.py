"""Can another user run this interpreter? Not when it lives under a private home (pyenv's
/root/.pyenv on a 0700 /root): the tests that run a process as nobody then skip, naming why."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest

NOBODY = 65534


@functools.lru_cache(maxsize=None)
def _python_runs_as(uid: int) -> bool:
    try:
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                            sys.executable, "-c", "pass"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def need_python_as_nobody() -> None:
    """Skip unless root can start this interpreter as nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as another user")
    if not _python_runs_as(NOBODY):
        pytest.skip(f"{sys.executable} cannot be run by another user (a private directory)")
