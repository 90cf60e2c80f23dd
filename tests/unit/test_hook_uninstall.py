"""`cgctl hook uninstall` gives libvirt's hooks directory back as the operator had it: the
`<driver>.d` directories `install` made go when they are empty again; one holding the
operator's own hook stays with it (the Debian package's prerm runs this, docs/install.md)."""
from cgctl.hook import install as hookinstall


def test_uninstall_removes_the_directories_install_made_and_keeps_the_operators(tmp_path):
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    mine = hooks / "qemu.d" / "50-operator"
    mine.write_text("#!/bin/sh\nexit 0\n")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    hookinstall.install(str(hooks), ["/usr/bin/cgctl", "hook", "--"])
    assert (hooks / "lxc.d" / "cgctl").exists() and (hooks / "qemu.d" / "cgctl").exists()
    done = dict(hookinstall.uninstall(str(hooks)))
    assert done[str(hooks / "lxc.d")] == "removed (empty)" and str(hooks / "qemu.d") not in done
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert mine.read_text() == "#!/bin/sh\nexit 0\n"
