"""libvirt's in-process test driver (test:///default) for unit tests: no daemon, no root."""

from __future__ import annotations


def remove_domains(libvirt, domains) -> None:
    """Destroy and undefine what a test made on test:///default (shared by the whole process)."""
    for dom in domains:
        try:
            if dom.isActive():
                dom.destroy()
            if dom.isPersistent():
                dom.undefine()
        except libvirt.libvirtError:
            pass
