#!/usr/bin/env bash
# Build dist/cgctl_VERSION_all.deb from this checkout with dpkg-deb (no debhelper needed):
# cgctl in /usr/lib/python3/dist-packages, /usr/bin/cgctl, the unit in /lib/systemd/system
# (ExecStart=/usr/bin/cgctl daemon, as shipped), tmpfiles, man page, bash and zsh completion, docs in
# /usr/share/doc/cgctl. Usage: scripts/build-deb.sh [OUTDIR]. See docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-dist}")
version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' cgctl/__init__.py)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
r=$stage/root
install -d "$r/DEBIAN" "$r/usr/bin" "$r/usr/lib/python3/dist-packages" "$r/lib/systemd/system" \
    "$r/usr/lib/tmpfiles.d" "$r/usr/share/man/man1" "$r/usr/share/bash-completion/completions" \
    "$r/usr/share/zsh/vendor-completions" \
    "$r/usr/share/doc/cgctl"
# the package's code, without caches
tar -c --exclude=__pycache__ --exclude='*.pyc' cgctl | tar -x -C "$r/usr/lib/python3/dist-packages"
sed '1s|^#!.*|#!/usr/bin/python3|' bin/cgctl > "$r/usr/bin/cgctl"
chmod 0755 "$r/usr/bin/cgctl"
install -m 0644 systemd/cgctl.service "$r/lib/systemd/system/cgctl.service"
install -m 0644 systemd/cgctl.tmpfiles.conf "$r/usr/lib/tmpfiles.d/cgctl.conf"
gzip -9n < docs/cgctl.1 > "$r/usr/share/man/man1/cgctl.1.gz"
install -m 0644 completion/cgctl.bash "$r/usr/share/bash-completion/completions/cgctl"
install -m 0644 completion/_cgctl "$r/usr/share/zsh/vendor-completions/_cgctl"
install -m 0644 README.md docs/*.md debian/copyright "$r/usr/share/doc/cgctl/"
printf 'cgctl (%s) unstable; urgency=medium\n\n  * Built from the repository.\n\n -- cgctl maintainers <root@localhost>  %s\n' \
    "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-0}")" | gzip -9n > "$r/usr/share/doc/cgctl/changelog.Debian.gz"
sed "s/@VERSION@/$version/" debian/control.in > "$r/DEBIAN/control"
echo "Installed-Size: $(du -sk --exclude=DEBIAN "$r" | cut -f1)" >> "$r/DEBIAN/control"
install -m 0755 debian/postinst debian/prerm debian/postrm "$r/DEBIAN/"
find "$r" -type d -exec chmod 0755 {} +
find "$r/usr/lib/python3" "$r/usr/share" -type f -exec chmod 0644 {} +
mkdir -p "$out"
deb=$out/cgctl_${version}_all.deb
dpkg-deb --root-owner-group -Zgzip --build "$r" "$deb" >/dev/null
echo "$deb"
