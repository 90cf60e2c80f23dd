#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: unit, real-cgroup, real-libvirt,
# the unit lane on Python 3.9 and 3.13 (scripts/pythons.sh), then the cgroup v2 lane on a real
# kernel under emulation, then the host lane (systemd + libvirt in a VM), once with README.md's
# venv install and once with the Debian package. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test: pytest ran no test: that is a failure" >&2
    rc=1
fi
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi

# the unit lane again on the oldest and newest supported Pythons (docs/testing.md)
if [ "$#" -eq 0 ] && [ "${CGCTL_SKIP_PYTHONS:-0}" != 1 ]; then
    bash scripts/pythons.sh || exit 1
fi

if [ "$#" -gt 0 ]; then
    echo "test: v2 lane and host lane not run (a pytest selection was given)"
    exit 0
fi
if [ "${CGCTL_SKIP_V2LANE:-0}" = 1 ]; then
    echo "test: v2 lane not run (CGCTL_SKIP_V2LANE=1)"
else
    bash tests/v2lane/run
    lane=$?
    if [ "$lane" -eq 77 ]; then
        echo "test: v2 lane skipped: this machine cannot boot a kernel (see above)"
    elif [ "$lane" -ne 0 ]; then
        exit "$lane"
    fi
fi

# The host lane: a Debian 12 systemd + cgroup v2 + libvirt host in a VM, cgctl installed per
# README.md (tests/hostlane/README.md; 8-14 min, ~4 min more to build its image on a cold cache).
if [ "${CGCTL_SKIP_HOSTLANE:-0}" = 1 ]; then
    echo "test: host lane not run (CGCTL_SKIP_HOSTLANE=1)"
    exit 0
fi
bash tests/hostlane/run
lane=$?
if [ "$lane" -eq 77 ]; then
    echo "test: *** host lane SKIPPED: this machine cannot boot a kernel (see above) ***"
    exit 0
fi
[ "$lane" -eq 0 ] || exit "$lane"
# Its second boot: the Debian package built here, installed per docs/install.md, removed, purged
# (tests/hostlane/inside/test_deb_install.py; 6-10 min). CGCTL_SKIP_DEBLANE=1 skips it.
if [ "${CGCTL_SKIP_DEBLANE:-0}" = 1 ]; then
    echo "test: Debian package lane not run (CGCTL_SKIP_DEBLANE=1)"
    exit 0
fi
bash tests/hostlane/run --install deb
