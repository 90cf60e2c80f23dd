"""Fixtures for tests against a real libvirtd (root only; see tests/harness/libvirtd.py).

- ``libvirt_sandbox`` (session): a running virtlogd + libvirtd. Reuses one started by
  ``python -m tests.harness.libvirtd start`` (and then leaves it running), otherwise starts its
  own and stops it, by PID, at the end of the session.
- ``make_guest`` (function): ``make_guest('qemu'|'lxc', start=True, transient=False, **xml_kw)``
  returns a TestGuest; every guest made is destroyed and undefined after the test.
- ``qemu_guest`` / ``lxc_guest`` (function): one running tiny guest each.
- ``session_qemu_guest`` / ``session_lxc_guest`` (session): shared running guests for read-only
  tests (do not stop or reconfigure them).

Every test collected here gets the ``libvirt`` marker.
"""

from __future__ import annotations

import atexit
import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).parent
if str(_HERE.parents[1]) not in sys.path:  # plain `pytest` (not `python -m pytest`) from anywhere
    sys.path.insert(0, str(_HERE.parents[1]))

from tests.harness.libvirtd import LibvirtSandbox, SandboxError, skip_reason  # noqa: E402


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.libvirt)


@pytest.fixture(scope="session")
def libvirt_sandbox():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    sb = LibvirtSandbox.attach()
    if sb is None:
        try:
            sb = LibvirtSandbox().start()
        except SandboxError as e:
            if "not started by this sandbox" in str(e):
                pytest.skip(str(e))
            raise
        # belt and braces: stop the daemons even if pytest dies before teardown
        atexit.register(_stop_quietly, sb)
    try:
        yield sb
    finally:
        _stop_quietly(sb)


def _stop_quietly(sb: LibvirtSandbox) -> None:
    try:
        sb.stop()  # owned: destroys cgt-* guests and stops daemons; attached: removes our guests
    except Exception as e:  # pragma: no cover - teardown must not hide the test's own failure
        print(f"libvirt sandbox teardown: {e}")


class _GuestMaker:
    def __init__(self, sandbox: LibvirtSandbox):
        self.sandbox = sandbox
        self.made = []

    def __call__(self, kind: str = "qemu", **kw):
        guest = self.sandbox.new_guest(kind, **kw)
        self.made.append(guest)
        return guest

    def cleanup(self) -> None:
        errors = []
        for g in reversed(self.made):
            try:
                self.sandbox.remove(g.name, g.uri)
            except Exception as e:  # keep going: remove every guest
                errors.append(f"{g.name}: {e}")
        self.made.clear()
        if errors:
            raise SandboxError("guest cleanup failed: " + "; ".join(errors))


@pytest.fixture
def make_guest(libvirt_sandbox):
    maker = _GuestMaker(libvirt_sandbox)
    try:
        yield maker
    finally:
        maker.cleanup()


@pytest.fixture
def qemu_guest(make_guest):
    return make_guest("qemu")


@pytest.fixture
def lxc_guest(make_guest):
    return make_guest("lxc")


@pytest.fixture(scope="session")
def _session_guests(libvirt_sandbox):
    maker = _GuestMaker(libvirt_sandbox)
    try:
        yield maker
    finally:
        maker.cleanup()


@pytest.fixture(scope="session")
def session_qemu_guest(_session_guests):
    return _session_guests("qemu")


@pytest.fixture(scope="session")
def session_lxc_guest(_session_guests):
    return _session_guests("lxc")
