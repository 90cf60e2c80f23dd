"""Profiles on a real guest of the libvirt sandbox, through the real command
(docs/fleet.md#profiles): a profile applied at start, changed while the guest runs (in force at
once), and the guest restarted gets the changed profile with its own override on top. "start" is
``virsh start`` then ``cgctl apply``, the apply path the hook and the service take at every start.

    flock /tmp/cgctl-libvirt.lock .venv/bin/python -m pytest -p no:cacheprovider \
        tests/libvirt/test_profiles.py
"""

from __future__ import annotations

import json

from tests.clikit import cgctl
from tests.libvirt.test_modes import live_file, start

G, MiB = 1 << 30, 1 << 20


def test_profile_applied_changed_live_and_after_a_restart(libvirt_sandbox, make_guest, tmp_path):
    journal = tmp_path / "journal.db"
    guest = make_guest("qemu", start=False)
    cgctl(journal, "profile", "set", "gold", "cpu_shares=512", "hard_limit=1G", "--config")
    cgctl(journal, "set", guest.name, "--profile", "gold")  # stopped: --current is --config

    start(libvirt_sandbox, guest, journal)
    assert (live_file(guest, "cpu", "cpu.shares"),
            live_file(guest, "memory", "memory.limit_in_bytes")) == ("512", str(G))

    # changing the profile changes the running guest now (--current: --perm)
    r = cgctl(journal, "--json", "profile", "set", "gold", "cpu_shares=2048")
    [out] = json.loads(r.stdout)
    assert out["guest"] == guest.name and not out["errors"]
    assert live_file(guest, "cpu", "cpu.shares") == "2048"

    # the domain's metadata carries the profile by value (for another host)
    md = libvirt_sandbox.virsh("metadata", guest.name, "http://cgctl.org/xmlns/guest",
                               "--config", uri=guest.uri).stdout
    assert '<profile name="gold"' in md and 'value="2048"' in md

    # an override of the guest's own, then a restart: profile + override
    cgctl(journal, "set", guest.name, "hard_limit=768M", "--config")
    libvirt_sandbox.destroy(guest.name, guest.uri)
    start(libvirt_sandbox, guest, journal)
    assert (live_file(guest, "cpu", "cpu.shares"),
            live_file(guest, "memory", "memory.limit_in_bytes")) == ("2048", str(768 * MiB))
    d = json.loads(cgctl(journal, "--json", "show", guest.name).stdout)
    by = {r["param"]: r for r in d["params"]}
    assert d["profile"] == "gold"
    assert (by["cpu_shares"]["from_profile"], by["hard_limit"]["from_profile"]) == (True, False)
    assert not by["cpu_shares"]["differs"] and not by["hard_limit"]["differs"]
