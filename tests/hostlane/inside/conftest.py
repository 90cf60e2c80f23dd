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
    """make_guest(name, driver='qemu') -> a defined (not started) Guest; removed at the end."""
    from .hostkit import Guest
    made = []

    def make(name: str, driver: str = "qemu"):
        g = Guest(name, driver).define()
        made.append(g)
        return g

    yield make
    for g in made:
        g.remove()
