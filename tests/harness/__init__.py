"""Test harness: a real libvirtd (+ virtlogd) sandbox and tiny guest factories.

Only tests and demo scripts use this package; cgctl itself never imports it.
Import from the module: ``from tests.harness.libvirtd import LibvirtSandbox, qemu_xml, lxc_xml``
(re-exporting here would make ``python -m tests.harness.libvirtd`` import the module twice).
"""
