"""The host lane's tests run inside its Debian 12 VM (tests/hostlane/run), as root, against the
real systemd, libvirt and cgctl installed there per README.md. Anywhere else they skip: they
drive only the installed command line (`cgctl`, `systemctl`, `virsh`), never cgctl's modules."""
import os

import pytest

IN_LANE = os.environ.get("CGCTL_HOSTLANE") == "1"


def pytest_collection_modifyitems(config, items):
    if IN_LANE:
        return
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="host lane only: run tests/hostlane/run")
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def make_guest():
    """make_guest(name, driver='qemu', disk=None) -> a defined (not started) Guest; removed at
    the end. ``disk``: a host block device (the ``loop_disk`` fixture) as the QEMU guest's disk."""
    from .hostkit import Guest
    made = []

    def make(name: str, driver: str = "qemu", disk: str = None):
        g = Guest(name, driver, disk).define()
        made.append(g)
        return g

    yield make
    for g in made:
        g.remove()


@pytest.fixture(scope="module")
def loop_disk():
    """A 64 MiB loop device (/dev/loopN) over a sparse file, detached at the end of the module
    (lazily, if a guest still holds it: losetup -d sets autoclear on a busy device)."""
    import subprocess
    import tempfile
    from .hostkit import loop_device
    fd, path = tempfile.mkstemp(prefix="hostlane-disk-", suffix=".img", dir="/var/tmp")
    os.close(fd)
    dev = loop_device(path)
    yield dev
    subprocess.run(["losetup", "-d", dev], capture_output=True)
    os.unlink(path)
