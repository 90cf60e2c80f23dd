"""cgctl.virt against libvirt's in-process test driver (test:///default): no daemon, no root."""

from __future__ import annotations

import subprocess
import sys
import uuid as uuidlib

import pytest

from tests.testdriver import remove_domains

from cgctl import errors

libvirt = pytest.importorskip("libvirt")
from cgctl import virt  # noqa: E402

TEST = "test:///default"
TEST_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # the test driver's built-in running domain
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/cgctl-no-such-socket"


def _xml(name, uuid):
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            "<memory>65536</memory><os><type>hvm</type></os></domain>")


@pytest.fixture
def conn():
    c = libvirt.open(TEST)  # test:///default is shared by every connection of this process
    made = []
    yield c, made
    remove_domains(libvirt, made)
    c.close()


def test_lookup_by_name():
    g = virt.lookup("test", [TEST])
    assert g == virt.Guest(name="test", uuid=TEST_UUID, driver="test", uri=TEST, running=True,
                           persistent=True, pid=None)


@pytest.mark.parametrize("ident", [TEST_UUID, TEST_UUID.upper(), TEST_UUID.replace("-", "")])
def test_lookup_by_uuid(ident):
    assert virt.lookup(ident, [TEST]).name == "test"


def test_not_found_names_the_guest():
    with pytest.raises(errors.GuestNotFound) as exc:
        virt.lookup("no-such-guest", [TEST])
    assert "no-such-guest" in str(exc.value)
    assert exc.value.guest == "no-such-guest"


def test_unknown_uuid_is_not_found():
    with pytest.raises(errors.GuestNotFound):
        virt.lookup(str(uuidlib.uuid4()), [TEST])


def test_unreachable_uri_is_skipped():
    assert virt.lookup("test", [UNREACHABLE, TEST]).uri == TEST
    assert [g.name for g in virt.list_guests([UNREACHABLE, TEST])] == ["test"]


def test_no_reachable_uri_is_libvirt_error():
    with pytest.raises(errors.LibvirtError) as exc:
        virt.lookup("test", [UNREACHABLE])
    assert not isinstance(exc.value, errors.GuestNotFound)
    with pytest.raises(errors.LibvirtError):
        virt.list_guests([UNREACHABLE])


def test_list_guests():
    guests = virt.list_guests([TEST])
    assert [(g.name, g.running, g.persistent) for g in guests] == [("test", True, True)]


def test_defined_not_running_and_transient(conn):
    c, made = conn
    u1, u2 = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    made.append(c.defineXML(_xml("cgt-defined", u1)))
    made.append(c.createXML(_xml("cgt-transient", u2), 0))
    stopped = virt.lookup("cgt-defined", conn=c)
    assert (stopped.running, stopped.persistent, stopped.pid, stopped.uuid) == (False, True, None, u1)
    transient = virt.lookup(u2, conn=c)
    assert (transient.name, transient.running, transient.persistent) == ("cgt-transient", True, False)
    names = {g.name: g for g in virt.list_guests(conn=c)}
    assert {"test", "cgt-defined", "cgt-transient"} <= set(names)
    # a passed-in connection is not closed
    assert c.isAlive()


def test_translate_error():
    e = libvirt.libvirtError("x")
    e.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 0, "", None, None, 0, 0)
    assert isinstance(virt.translate_error(e, guest="g"), errors.GuestNotFound)
    e.err = (libvirt.VIR_ERR_OPERATION_INVALID, 0, "Requested operation is not valid: domain is not running",
             0, "", None, None, 0, 0)
    assert isinstance(virt.translate_error(e, guest="g"), errors.GuestNotRunning)
    e.err = (libvirt.VIR_ERR_INTERNAL_ERROR, 0, "boom", 0, "", None, None, 0, 0)
    out = virt.translate_error(e, guest="g")
    assert type(out) is errors.LibvirtError and "boom" in str(out)


def test_import_without_libvirt_python():
    code = ("import sys; sys.modules['libvirt'] = None; "
            "import cgctl.virt as v, cgctl.errors as e\n"
            "try:\n    v.lookup('x', ['test:///default'])\n"
            "except e.LibvirtError as exc:\n    print(exc)\n    sys.exit(0)\n"
            "sys.exit(1)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "libvirt-python is not installed" in r.stdout


def test_import_is_lazy():
    code = "import sys, cgctl.virt; sys.exit('libvirt' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
