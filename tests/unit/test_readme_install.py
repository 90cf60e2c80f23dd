"""README.md's "Install on a host" lines are what the host lane runs inside its Debian 12 VM
(tests/hostlane/inside/job.sh extracts them between the markers): they must stay extractable,
and name only files that exist in the checkout."""
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN, END = "<!-- install-on-a-host:begin -->", "<!-- install-on-a-host:end -->"


def install_lines():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "README.md: install markers missing or repeated"
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    m = re.fullmatch(r"```sh\n(.*)\n```", block, re.S)
    assert m, "README.md: the install section must be exactly one ```sh block between the markers"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_markers_delimit_one_sh_block():
    lines = install_lines()
    assert lines and not any(ln.lstrip().startswith("#") for ln in lines)


def test_the_lane_extracts_with_the_same_markers():
    job = open(os.path.join(ROOT, "tests", "hostlane", "inside", "job.sh")).read()
    assert BEGIN in job and END in job


def test_the_lines_enable_the_service_and_install_the_hook_from_the_venv():
    lines = install_lines()
    joined = "\n".join(lines)
    venv = re.search(r"python3 -m venv (?:--\S+ )*(\S+)", joined).group(1)
    assert f"ExecStart={venv}/bin/cgctl daemon" in joined   # the drop-in docs/operations.md describes
    assert "systemctl enable --now cgctl.service" in joined
    assert any(shlex.split(ln)[-2:] == ["hook", "install"] for ln in lines)
    # the hook is installed after the service, and libvirt restarted after it (hooks are read at start)
    order = [i for i, ln in enumerate(lines) for key in ("enable --now", "hook install", "restart libvirtd")
             if key in ln]
    assert order == sorted(order) and len(order) == 3


def test_the_files_it_installs_exist_in_the_checkout():
    for ln in install_lines():
        words = shlex.split(ln)
        if words[0] == "install" and "-d" not in words:
            assert os.path.isfile(os.path.join(ROOT, words[-2])), ln
