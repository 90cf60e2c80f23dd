"""zsh loads the generated completion (completion/_cgctl) the way an installed one is loaded:
from a directory of $fpath by compinit, in an interactive zsh on a pseudo-terminal (zsh's zpty
module), and <Tab> completes commands, a command's options and parameter names. Every match
zsh's completion adds is written to a file. Needs zsh (scripts/setup.sh installs it)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# zsh -f drive.zsh FPATH_DIR OUT LINE: types LINE<Tab> in an interactive zsh under zpty; a
# wrapped compadd appends every match to OUT; comppostfuncs marks the end (OUT.done)
DRIVER = r'''
zmodload zsh/zpty || exit 3
zpty z zsh -f -i
zpty -w z "PS1='%% '; fpath=(${(q)1} \$fpath); autoload -U compinit; compinit -u -D"
zpty -w z "compadd() { if (( \${@[(I)-[OAD]]} )); then builtin compadd \"\$@\"; return; fi; local -a __m; builtin compadd -O __m \"\$@\"; print -rl -- \$__m >>${(q)2}; builtin compadd \"\$@\"; }"
zpty -w z "__done() { print ok >${(q)2}.done; }; comppostfuncs=(__done); bindkey '^I' complete-word"
zpty -w -n z "$3"$'\t'
for i in {1..600}; do [[ -e $2.done ]] && break; sleep 0.1; done
zpty -d z
[[ -e $2.done ]]
'''


@pytest.fixture(scope="module")
def zsh():
    path = shutil.which("zsh")
    if not path:
        pytest.skip("NO ZSH on this machine: the zsh completion was NOT tested "
                    "(scripts/setup.sh installs zsh)")
    return path


def complete(zsh, tmp_path, fpath_dir, line):
    driver = tmp_path / "drive.zsh"
    driver.write_text(DRIVER)
    out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
    r = subprocess.run([zsh, "-f", str(driver), str(fpath_dir), str(out), line],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"zsh completion of {line!r} did not finish: {r.stderr}"
    return out.read_text().split() if out.exists() else []


@pytest.fixture
def installed(tmp_path):
    """A $fpath directory holding the file as installed (vendor-completions/_cgctl)."""
    d = tmp_path / "vendor-completions"
    d.mkdir()
    shutil.copy(os.path.join(ROOT, "completion", "_cgctl"), d / "_cgctl")
    return d


def test_zsh_completes_commands_options_and_parameters(zsh, tmp_path, installed):
    assert complete(zsh, tmp_path, installed, "cgctl me") == ["memtune"]
    assert {"set", "show", "history", "install-host"} <= set(complete(zsh, tmp_path, installed, "cgctl "))
    assert set(complete(zsh, tmp_path, installed, "cgctl memtune web1 --h")) == {"--hard-limit", "--help"}
    assert complete(zsh, tmp_path, installed, "cgctl set web1 hard") == ["hard_limit"]
    assert complete(zsh, tmp_path, installed, "cgctl --journal /tmp/x.db hi") == ["history"]


def test_without_the_file_zsh_completes_no_command(zsh, tmp_path):
    """The check above can fail: with no _cgctl in $fpath, zsh offers no cgctl command."""
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "memtune" not in complete(zsh, tmp_path, empty, "cgctl me")
