"""Every Python that pyproject.toml claims reads TOML: tomllib from 3.11, the declared tomli before
(scripts/pythons.sh runs the unit lane on 3.9 and 3.13)."""

from __future__ import annotations

import os
import sys

import pytest

from cgctl import config
from cgctl.core import policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_tomli_is_declared_for_pythons_without_tomllib():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert 'requires-python = ">=3.9"' in text
    assert """'tomli>=1.1; python_version < "3.11"'""" in text


def _without_tomllib(monkeypatch):
    pytest.importorskip("tomli")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib now fails, as on 3.9


@pytest.mark.parametrize("stdlib", [True, False], ids=["tomllib", "tomli"])
def test_the_config_file_and_policy_files_load(tmp_path, monkeypatch, stdlib):
    if not stdlib:
        _without_tomllib(monkeypatch)
    elif sys.version_info < (3, 11):
        pytest.skip("no tomllib before Python 3.11")
    cfg = tmp_path / "cgctl.toml"
    cfg.write_text('journal = "/srv/j.db"\nhistory_keep_days = 7\n')
    c = config.load_config(str(cfg))
    assert (c.journal, c.history_keep_days) == ("/srv/j.db", 7)
    pol = tmp_path / "p.toml"
    pol.write_text('schema = "cgctl-policy"\nversion = 1\n[guests.web1]\nhard_limit = "1G"\n')
    assert policy.load(str(pol))["guests"] == {"web1": {"hard_limit": "1G"}}
