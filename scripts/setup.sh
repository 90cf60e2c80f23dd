#!/usr/bin/env bash
# Install everything cgctl, its demo and its tests need on a fresh Debian 12 machine (as root):
# Debian packages with apt-get, Python packages into ./.venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-lxc libvirt-clients
      qemu-system-x86 libvirt-dev pkg-config python3-venv python3-dev gcc cgroup-tools
      util-linux sqlite3 procps zsh)   # zsh: tests/unit/test_zsh_completion.py
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # no libvirt-daemon-system: it pulls systemd, which this kind of machine does not run
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's own Python, not a pyenv shim: its site-packages start fast (matters inside the v2 lane)
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0)' 2>/dev/null; then
    rm -rf .venv
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import cgctl, libvirt, psutil, pyudev, pytest, pyfakefs, hypothesis' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.cgctl-installed ]; then
    # compat mode: a plain path in a .pth file; the default import-hook finder costs ~12 ms per start
    .venv/bin/pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e '.[libvirt,test]'
    touch .venv/.cgctl-installed
fi
echo "setup: ready ($(.venv/bin/python --version), libvirt $(libvirtd --version | awk '{print $3}'))"
