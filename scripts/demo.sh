#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run cgctl's main job against a real libvirtd and a real guest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py
