#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: unit, real-cgroup, real-libvirt,
# the unit lane on Python 3.9 and 3.13 (scripts/pythons.sh),
# then the cgroup v2 lane on a real kernel under emulation. Extra arguments go to pytest.
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

if [ "${CGCTL_SKIP_V2LANE:-0}" = 1 ] || [ "$#" -gt 0 ]; then
    echo "test: v2 lane not run (CGCTL_SKIP_V2LANE=1 or a pytest selection was given)"
    exit 0
fi
bash tests/v2lane/run
lane=$?
if [ "$lane" -eq 77 ]; then
    echo "test: v2 lane skipped: this machine cannot boot a kernel (see above)"
    exit 0
fi
exit "$lane"
