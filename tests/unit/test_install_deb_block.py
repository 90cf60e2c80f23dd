"""docs/install.md's Debian package lines are what `tests/hostlane/run --install deb` runs in its
Debian 12 VM (job.sh extracts them between the markers): one ```sh block, installing the file
scripts/build-deb.sh writes, enabling the packaged unit, then the hook, then libvirtd's restart."""
import os
import re
import shlex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN, END = "<!-- install-deb:begin -->", "<!-- install-deb:end -->"


def read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def deb_lines():
    text = read("docs/install.md")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "docs/install.md: markers missing or repeated"
    m = re.fullmatch(r"```sh\n(.*)\n```", text.split(BEGIN, 1)[1].split(END, 1)[0].strip(), re.S)
    assert m, "docs/install.md: exactly one ```sh block between the install-deb markers"
    return [ln for ln in m.group(1).splitlines() if ln.strip()]


def test_the_lane_extracts_with_the_same_markers_and_has_its_test():
    job = read("tests/hostlane/inside/job.sh")
    assert BEGIN in job and END in job and "docs/install.md" in job
    run = read("tests/hostlane/run")
    assert "tests/hostlane/inside/test_deb_install.py" in run and "scripts/build-deb.sh" in run
    assert os.path.isfile(os.path.join(ROOT, "tests/hostlane/inside/test_deb_install.py"))


def test_the_lines_install_what_build_deb_writes():
    first = shlex.split(deb_lines()[0])
    assert first[:3] == ["apt-get", "install", "-y"]
    pattern = first[-1]
    version = re.search(r'__version__ = "(.*)"', read("cgctl/__init__.py")).group(1)
    build = read("scripts/build-deb.sh")
    assert 'out=$(realpath -m "${1:-dist}")' in build and "deb=$out/cgctl_${version}_all.deb" in build
    assert re.fullmatch(pattern.replace(".", r"\.").replace("*", ".*"), f"./dist/cgctl_{version}_all.deb")


def test_the_packaged_unit_is_enabled_then_the_hook_then_libvirtd_restarted():
    lines = deb_lines()
    order = [i for i, ln in enumerate(lines) for key in ("enable --now cgctl", "cgctl hook install",
                                                         "restart libvirtd") if key in ln]
    assert order == sorted(order) and len(order) == 3
    assert not any("ExecStart" in ln or "/opt/" in ln for ln in lines)   # the unit as packaged
