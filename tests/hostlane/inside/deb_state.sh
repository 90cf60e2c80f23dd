# The Debian package lane's host state (tests/hostlane/run --install deb):
#   deb_state.sh prepare        job.sh, before docs/install.md's lines: make the image a plain
#                               Debian 12 host where it is not, give the operator a hook of
#                               their own, and note the host's state in $BEFORE
#   deb_state.sh snapshot DIR   the same notes into DIR (test_deb_install.py compares them
#                               after `apt-get remove` and `purge`)
# The notes: hooks.txt (every path under /etc/libvirt/hooks with type, mode and checksum) and
# cgctl-paths.txt (every path on the host named like cgctl, outside the test's own copies).
set -eu
BEFORE=/var/lib/hostlane/before-deb

snapshot() {
    mkdir -p "$1"
    { find /etc/libvirt/hooks -printf '%p %y %m\n'
      find /etc/libvirt/hooks -type f -exec sha256sum {} +; } | sort >"$1/hooks.txt"
    # dpkg's own bookkeeping (/var/lib/dpkg) is checked through dpkg-query instead; systemd's
    # per-unit runtime records (/run/systemd/units, propagate) are systemd's, kept by it
    find / /run -xdev \( -path /proc -o -path /sys -o -path /root/cgctl -o -path /mnt \
        -o -path /tmp -o -path /var/tmp -o -path /run/hostlane -o -path /var/lib/hostlane \
        -o -path /var/lib/dpkg -o -path /run/systemd/units -o -path /run/systemd/propagate \) -prune \
        -o -name '*cgctl*' -print | sort >"$1/cgctl-paths.txt"
}

case "${1:-}" in
prepare)
    # The image is built without docs and man pages (dpkg path-exclude in
    # tests/hostlane/image/build); a Debian host has no such rule, and the package's man page and
    # docs must land where a host has them.
    sed -i '/^path-exclude=\/usr\/share\/\(man\|doc\)\//d' /etc/dpkg/dpkg.cfg.d/99mmdebstrap 2>/dev/null || true
    # the operator's own libvirt hook, which cgctl must neither change nor remove
    install -d -m 0755 /etc/libvirt/hooks/qemu.d
    printf '#!/bin/sh\n# the operator'"'"'s own hook\nexit 0\n' >/etc/libvirt/hooks/qemu.d/50-operator
    chmod 0755 /etc/libvirt/hooks/qemu.d/50-operator
    snapshot "$BEFORE"
    echo "hostlane: before the package: $(grep -c . "$BEFORE/cgctl-paths.txt" || true) paths named like cgctl; hooks: $(tr '\n' ';' <"$BEFORE/hooks.txt")"
    ;;
snapshot) snapshot "$2" ;;
*) echo "usage: deb_state.sh prepare | snapshot DIR" >&2; exit 2 ;;
esac
