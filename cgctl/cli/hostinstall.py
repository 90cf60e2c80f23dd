"""``cgctl install-host``: the host parts of a pip install, with paths where pip put cgctl.

A wheel cannot write to /etc or /lib; this command does, once, as root: the systemd unit (its
``ExecStart=`` is this installation's ``cgctl``, not /usr/bin/cgctl which only the Debian package
provides), the tmpfiles entry for the journal's directory, bash and zsh completion and the man
page. It writes files only and prints the commands to run next (daemon-reload, enable); it never starts
anything. The files come with the wheel (pyproject.toml's data-files, under ``<prefix>/share``)
or, from a source checkout, from the checkout. See docs/install.md.
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
from typing import Dict, List, Optional

from cgctl.errors import CgctlError

# source (relative to <prefix>/share/cgctl or the checkout) -> where it goes on the host
TARGETS = {
    "systemd/cgctl.service": "/etc/systemd/system/cgctl.service",
    "systemd/cgctl.tmpfiles.conf": "/etc/tmpfiles.d/cgctl.conf",
    "completion/cgctl.bash": "/usr/local/share/bash-completion/completions/cgctl",
    # in zsh's default $fpath on Debian and most distributions (compinit loads _cgctl from it)
    "completion/_cgctl": "/usr/local/share/zsh/site-functions/_cgctl",
    "docs/cgctl.1": "/usr/local/share/man/man1/cgctl.1",
}
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data_dirs() -> List[str]:
    """Where the shipped files may be: the install's share/cgctl, then a source checkout."""
    return [os.path.join(sysconfig.get_path("data"), "share", "cgctl"),
            os.path.join(sys.prefix, "share", "cgctl"), CHECKOUT]


def find(rel: str) -> str:
    for d in data_dirs():
        p = os.path.join(d, rel)
        if os.path.isfile(p):
            return p
    raise CgctlError(f"{rel} is not in this installation (looked in {', '.join(data_dirs())})")


def cgctl_command() -> List[str]:
    """How systemd should start this cgctl: the ``cgctl`` script beside this interpreter, else
    this interpreter with ``-m cgctl``."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = os.path.join(d, "cgctl")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return [os.path.abspath(p)]
    return [os.path.abspath(sys.executable), "-m", "cgctl"]


def unit_text(template: str, command: List[str], doc_dir: Optional[str]) -> str:
    out = []
    for line in template.splitlines():
        if line.startswith("ExecStart="):
            line = "ExecStart=" + " ".join(shlex.quote(c) for c in command) + " daemon"
        elif line.startswith("Documentation=") and doc_dir:
            line = f"Documentation=file:{doc_dir}/operations.md man:cgctl(1)"
        out.append(line)
    return "\n".join(out) + "\n"


def plan() -> Dict[str, str]:
    """target path -> its text."""
    texts = {}
    for rel, target in TARGETS.items():
        with open(find(rel)) as f:
            texts[target] = f.read()
    docs = os.path.join(os.path.dirname(find("docs/cgctl.1")), "")
    doc_dir = docs.rstrip("/") if os.path.isfile(os.path.join(docs, "operations.md")) else None
    unit = TARGETS["systemd/cgctl.service"]
    texts[unit] = unit_text(texts[unit], cgctl_command(), doc_dir)
    return texts


def main(args, say) -> int:
    root = args.root or "/"
    for target, text in plan().items():
        path = os.path.join(root, target.lstrip("/"))
        say(("would write " if args.dry_run else "wrote ") + path)
        if args.dry_run:
            continue
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            raise CgctlError(f"cannot write {path}: {e.strerror}", path=path, errno=e.errno)
    say("next: systemd-tmpfiles --create cgctl.conf; systemctl daemon-reload; "
        "systemctl enable --now cgctl")
    return 0
