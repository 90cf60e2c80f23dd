"""What an admin installs: the generated man page and completion are current and work, `cgctl
install-host` writes a unit whose ExecStart is this cgctl, the wheel carries the host files, and
the Debian package puts everything where Debian expects it (docs/install.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cgctl.cli import hostinstall, main as cli, manpage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def committed(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def test_man_page_is_current():
    assert committed("docs/cgctl.1") == manpage.render_man(), \
        "docs/cgctl.1 is stale: python -m cgctl.cli.manpage man > docs/cgctl.1"


def test_bash_completion_is_current():
    assert committed("completion/cgctl.bash") == manpage.render_bash(), \
        "completion/cgctl.bash is stale: python -m cgctl.cli.manpage bash > completion/cgctl.bash"


def test_zsh_completion_is_current():
    assert committed("completion/_cgctl") == manpage.render_zsh(), \
        "completion/_cgctl is stale: python -m cgctl.cli.manpage zsh > completion/_cgctl"


def test_man_page_names_every_command_and_option():
    text = manpage.render_man()
    for name, p in manpage._commands(cli.build_parser()).items():
        assert f".SS {name.replace('-', chr(92) + '-')}" in text
        for flags, _, _ in manpage._options(p):
            for f in flags:
                assert f.replace("-", "\\-") in text, (name, f)
    if shutil.which("man"):
        r = subprocess.run(["man", "-l", os.path.join(ROOT, "docs/cgctl.1")], capture_output=True,
                           text=True, env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_STDERR": "1"})
        assert r.returncode == 0 and "EXIT STATUS" in r.stdout and "memtune" in r.stdout


def complete(*words):
    """What bash completes for ``cgctl WORDS...`` (the last word being typed)."""
    script = (f"source {ROOT}/completion/cgctl.bash; COMP_WORDS=(cgctl {' '.join(words)}); "
              f"COMP_CWORD={len(words)}; _cgctl; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return r.stdout.split()


@pytest.mark.skipif(not shutil.which("bash"), reason="no bash")
def test_bash_completes_commands_options_and_parameters():
    assert complete("me") == ["memtune"]
    assert set(complete("memtune", "web1", "--h")) == {"--hard-limit", "--help"}
    assert "hard_limit=" in complete("set", "web1", "hard")
    assert complete("--journal", "/tmp/x.db", "hi") == ["history"]


def test_every_command_has_help_with_an_example_and_the_exit_statuses():
    parsers = manpage._commands(cli.build_parser())
    for name in parsers:
        rc, out, err = cli.run_captured([name, "--help"])
        assert (rc, err) == (0, ""), name
        assert "exit status" in out and "2    wrong request" in out, name
        assert "examples:" in out, name
        for flags, _, help_ in manpage._options(parsers[name]):
            assert help_, (name, flags)  # every option and argument says what it is
    rc, out, _ = cli.run_captured(["memtune", "--help"])
    assert "a bare number is KiB" in " ".join(out.split())


def test_hook_help_is_help_not_an_error():
    r = subprocess.run([sys.executable, "-m", "cgctl", "hook", "--help"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "cgctl hook install" in r.stdout and r.stderr == ""


def test_version_says_version_and_cgroup_mode_in_one_line():
    r = subprocess.run([sys.executable, "-m", "cgctl", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
    assert r.stdout.startswith(f"cgctl {cli.__version__} (") and "host cgroup mode: " in r.stdout


def exec_start(unit_path):
    with open(unit_path) as f:
        [line] = [ln for ln in f if ln.startswith("ExecStart=")]
    return line[len("ExecStart="):].split()


def test_install_host_points_the_unit_at_this_cgctl(tmp_path):
    rc, out, err = cli.run_captured(["install-host", "--root", str(tmp_path)])
    assert (rc, err) == (0, ""), err
    for target in hostinstall.TARGETS.values():
        assert os.path.isfile(tmp_path / target.lstrip("/")), target
    argv = exec_start(tmp_path / "etc/systemd/system/cgctl.service")
    assert argv[-1] == "daemon" and os.access(argv[0], os.X_OK)
    r = subprocess.run(argv[:-1] + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("cgctl ")
    assert "next: systemd-tmpfiles" in out


def test_install_host_dry_run_writes_nothing(tmp_path):
    rc, out, _ = cli.run_captured(["install-host", "--root", str(tmp_path), "--dry-run"])
    assert rc == 0 and out.count("would write") == len(hostinstall.TARGETS)
    assert os.listdir(tmp_path) == []


def test_unit_text_rewrites_exec_start_and_documentation():
    text = hostinstall.unit_text("[Service]\nExecStart=/usr/bin/cgctl daemon\n"
                                 "Documentation=file:/usr/share/doc/cgctl/operations.md\n",
                                 ["/opt/my venv/bin/cgctl"], "/opt/v/share/cgctl/docs")
    assert "ExecStart='/opt/my venv/bin/cgctl' daemon" in text
    assert "Documentation=file:/opt/v/share/cgctl/docs/operations.md man:cgctl(1)" in text


@pytest.mark.slow
def test_the_wheel_carries_the_host_files_and_install_host_works_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "w"), ROOT], check=True, capture_output=True)
    [whl] = os.listdir(tmp_path / "w")
    venv = tmp_path / "venv"
    # the interpreter's own site-packages give psutil/pyudev; cgctl comes from the wheel only
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(tmp_path / "w" / whl)], check=True, capture_output=True)
    for rel in ("share/man/man1/cgctl.1", "share/bash-completion/completions/cgctl.bash",
                "share/zsh/site-functions/_cgctl", "share/cgctl/completion/_cgctl",
                "share/cgctl/systemd/cgctl.service", "share/cgctl/docs/operations.md"):
        assert os.path.isfile(venv / rel), rel
    root = tmp_path / "root"
    r = subprocess.run([str(venv / "bin/cgctl"), "install-host", "--root", str(root)],
                       capture_output=True, text=True, cwd=str(tmp_path),
                       env={"PATH": "/usr/bin:/bin", "CGCTL_NO_SERVICE": "1"})
    assert r.returncode == 0, r.stderr
    assert exec_start(root / "etc/systemd/system/cgctl.service") == [str(venv / "bin/cgctl"),
                                                                      "daemon"]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("dpkg-deb"), reason="no dpkg-deb")
def test_the_debian_package_puts_everything_where_debian_expects(tmp_path):
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts/build-deb.sh"), str(tmp_path / "out")],
                       capture_output=True, text=True, check=True)
    deb = r.stdout.strip()
    listing = subprocess.run(["dpkg-deb", "-c", deb], capture_output=True, text=True,
                             check=True).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/bin/cgctl", "/lib/systemd/system/cgctl.service",
                 "/usr/lib/tmpfiles.d/cgctl.conf", "/usr/share/man/man1/cgctl.1.gz",
                 "/usr/share/bash-completion/completions/cgctl",
                 "/usr/share/zsh/vendor-completions/_cgctl",
                 "/usr/share/doc/cgctl/operations.md", "/usr/share/doc/cgctl/copyright",
                 "/usr/lib/python3/dist-packages/cgctl/cli/main.py"):
        assert path in files, path
    assert not any("__pycache__" in f for f in files)
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "-x", deb, str(root)], check=True)
    argv = exec_start(root / "lib/systemd/system/cgctl.service")
    assert argv == ["/usr/bin/cgctl", "daemon"]
    assert os.access(root / argv[0].lstrip("/"), os.X_OK)  # the unit's program is in the package
    doc = [ln for ln in open(root / "lib/systemd/system/cgctl.service")
           if ln.startswith("Documentation=")][0].split("file:")[1].strip()
    assert os.path.isfile(root / doc.lstrip("/"))
    # the packaged command runs from the packaged code
    r = subprocess.run([str(root / "usr/bin/cgctl"), "--version"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(root / "usr/lib/python3/dist-packages"),
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.startswith("cgctl "), r.stderr
    control = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True,
                             check=True).stdout
    assert "python3-libvirt" in control and "python3-tomli | python3 (>= 3.11)" in control
