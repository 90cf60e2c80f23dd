# Run once inside a writable overlay of the image (tests/hostlane/run): libvirt's first connection
# probes QEMU (~12 s under TCG) and caches the result in /var/cache/libvirt/qemu/capabilities;
# every later run boots that overlay and starts with a warm cache.
set -e
echo "warm: $(date +%T) connecting to qemu:///system"
virsh -c qemu:///system domcapabilities --virttype qemu >/dev/null
virsh -c lxc:///system capabilities >/dev/null
ls /var/cache/libvirt/qemu/capabilities/
systemctl stop libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket || true
sync
echo "warm: $(date +%T) done"
