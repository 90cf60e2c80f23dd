# The host lane's job, run by the image's hostlane-job.service at the end of each boot of the VM
# (tests/hostlane/run writes /run/hostlane/job.sh, which runs a copy of this with pytest's
# arguments).
# First boot:
# 1. take a copy of the checkout (what an operator's `git clone` gives: no .venv, no .git);
# 2. run README.md's "Install on a host" lines, exactly, from that copy (or, HOSTLANE_INSTALL=deb,
#    docs/install.md's Debian package lines beside the .deb the host built);
# 3. run pytest (Debian's python3-pytest) there; results go to the share /run/hostlane.
#    A test that wants a host reboot (test_reboot.py) leaves $STATE/reboot-requested: the VM then
#    reboots (the job runner sees $SHARE/reboot), and on the
# second boot the job runs test_reboot.py's after-reboot tests only; the exit status is the first
# non-zero of the two runs.
set -u
SHARE=/run/hostlane
SRC=/mnt/cgctl-src
CLONE=/root/cgctl
STATE=/var/lib/hostlane          # on the VM's disk: survives the reboot, not the run
mkdir -p "$STATE"
echo "hostlane: inside: $(uname -r), systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p'), $(stat -fc %T /sys/fs/cgroup), libvirt $(libvirtd --version | awk '{print $NF}'), up $(cut -d' ' -f1 /proc/uptime)s"

pytest_run() {   # pytest_run TAG ARGS...: runs pytest in the clone, sets rc
    local tag=$1 t0; shift
    t0=$(date +%s)
    cd "$CLONE" || exit 1
    CGCTL_HOSTLANE=1 timeout -k 10 "${HOSTLANE_PYTEST_TIMEOUT:-3600}" python3 -u -m pytest -p no:cacheprovider \
        --junitxml="$SHARE/junit$tag.xml" "$@" 2>&1 | tee "$SHARE/pytest$tag.log"
    rc=${PIPESTATUS[0]}
    echo "hostlane: pytest$tag exit status $rc in $(( $(date +%s) - t0 ))s"
    journalctl -b --no-pager -o short-monotonic >"$SHARE/journal$tag.txt" 2>&1
}

if [ -e "$STATE/rebooted" ]; then
    echo "hostlane: after the reboot ($(journalctl --list-boots --no-pager | grep -c '^ *-\?[0-9]') boots in the journal)"
    rc1=$(cat "$STATE/rc1")
    CGCTL_HOSTLANE_PHASE=after-reboot pytest_run -after-reboot tests/hostlane/inside/test_reboot.py -v
    [ "$rc1" = 0 ] || rc=$rc1
    exit "$rc"
fi

echo "hostlane: system state: $(systemctl is-system-running)"
rm -rf "$CLONE"; mkdir -p "$CLONE"
tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./build \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis -cf - . | tar -C "$CLONE" -xf - \
    || { echo "hostlane: cannot copy the checkout"; exit 1; }
cd "$CLONE" || exit 1

# The install section between its markers, the ```sh block only: README.md's "Install on a
# host" (pip into a venv), or with `tests/hostlane/run --install deb` (HOSTLANE_INSTALL=deb)
# docs/install.md's Debian package lines, run beside the .deb the host built into the share.
DOC=README.md BEGIN='<!-- install-on-a-host:begin -->' END='<!-- install-on-a-host:end -->'
if [ "${HOSTLANE_INSTALL:-venv}" = deb ]; then
    DOC=docs/install.md BEGIN='<!-- install-deb:begin -->' END='<!-- install-deb:end -->'
    rm -rf dist && mkdir dist && cp "$SHARE"/dist/cgctl_*_all.deb dist/ \
        || { echo "hostlane: no .deb in the share"; exit 1; }
    bash tests/hostlane/inside/deb_state.sh prepare || exit 1
fi
sed -n "\%$BEGIN%,\%$END%p" "$DOC" \
    | sed -n '/^```sh$/,/^```$/p' | sed '1d;$d' >/root/readme-install.sh
if [ ! -s /root/readme-install.sh ]; then
    echo "hostlane: $DOC has no install section between $BEGIN and $END"; exit 1
fi
echo "hostlane: running $DOC's install section ($(grep -c . /root/readme-install.sh) lines) ..."
t0=$(date +%s)
# each line traced with a timestamp (bash takes PS4 from the environment only when not root)
if ! bash -c 'PS4="+ \${EPOCHREALTIME} "; set -ex; . /root/readme-install.sh' >"$SHARE/install.log" 2>&1; then
    cat "$SHARE/install.log"
    echo "hostlane: $DOC's install lines failed (above)"
    exit 1
fi
echo "hostlane: installed per $DOC in $(( $(date +%s) - t0 ))s"

rm -f "$STATE/reboot-requested"
pytest_run "" "$@"
if [ -e "$STATE/reboot-requested" ]; then
    echo "$rc" >"$STATE/rc1"
    touch "$STATE/rebooted" "$SHARE/reboot"
    echo "hostlane: a test asked for a host reboot: rebooting"
fi
exit "$rc"
