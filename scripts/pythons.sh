#!/usr/bin/env bash
# The unit lane on the oldest and the newest Python that pyproject.toml claims (3.9 and 3.13),
# each in its own venv (.venv-3.9, .venv-3.13) with cgctl installed from this checkout the way
# pip installs it for a user: its declared dependencies only (tomli before 3.11), no
# libvirt-python (the unit tests that need libvirt skip). Extra arguments go to pytest.
# An interpreter this machine lacks is reported, and fails the run if CGCTL_REQUIRE_PYTHONS=1.
set -uo pipefail
cd "$(dirname "$0")/.."
VERSIONS=${CGCTL_PYTHONS:-"3.9 3.13"}

find_python() {  # pyenv's, else on PATH (a pyenv shim on PATH may name one that is not set)
    local v=$1 p
    for p in "${PYENV_ROOT:-/root/.pyenv}"/versions/"$v".*/bin/"python$v" \
             "$(command -v "python$v" 2>/dev/null)"; do
        [ -x "$p" ] && "$p" -c pass 2>/dev/null && { echo "$p"; return 0; }
    done
    return 1
}

rc=0
for v in $VERSIONS; do
    py=$(find_python "$v") || {
        echo "pythons: no Python $v on this machine: the unit lane was NOT run on it" >&2
        [ "${CGCTL_REQUIRE_PYTHONS:-0}" = 1 ] && rc=1
        continue
    }
    venv=.venv-$v
    if [ ! -x "$venv/bin/python" ] || [ pyproject.toml -nt "$venv/.cgctl-installed" ]; then
        rm -rf "$venv"
        if ! { "$py" -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
                 --config-settings editable_mode=compat -e '.[test]' >"$venv.log" 2>&1; }; then
            echo "pythons: cannot set up $venv (see $venv.log)" >&2; rc=1; continue
        fi
        touch "$venv/.cgctl-installed"
    fi
    echo "pythons: unit lane on $("$venv/bin/python" --version)"
    "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/unit "$@"
    st=$?
    [ "$st" -ne 0 ] && { echo "pythons: Python $v: unit lane failed (exit $st)" >&2; rc=1; }
done
exit "$rc"
