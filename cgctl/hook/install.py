"""``cgctl hook install`` / ``uninstall``: write (or remove) the shell script libvirt runs from
``/etc/libvirt/hooks/{qemu,lxc}.d/``; it runs the hook only for the calls cgctl acts on and
decides the exit status libvirt sees. A file without MARKER is the operator's: never touched.
"""

from __future__ import annotations

import os
import sys

from cgctl import consts
from cgctl.start.options import (ACTIONS, DRIVERS, EXIT_OK, EXIT_REFUSE, EXIT_SCRIPT_REFUSE,
                                EXIT_USAGE, REQUEST_PREFIX, SCRIPT_ENV, SERVICE_LOCK,
                                STARTED_WAIT, Options)

SCRIPT_NAME = "cgctl"  # the file installed in <hooks>/qemu.d/ and lxc.d/
MARKER = "# cgctl-hook: installed by 'cgctl hook install'; 'cgctl hook uninstall' removes it"


# The script's text. Only this shell script, never the program it runs, decides the status
# libvirt sees: a removed venv, a Python upgrade or an import error must not make libvirt kill a
# running guest (`reconnect begin`) or refuse a start (docs/hook.md, "When cgctl itself is
# broken"). POSIX sh (dash); no `exec`, so the script is still there to map the status.
_SCRIPT = """#!/bin/sh
{marker}
# libvirt (>= 6.5) runs every executable in {driver}.d/ as SCRIPT NAME OP SUBOP EXTRA,
# the domain XML on stdin. It looks for hooks only when it starts: restart libvirtd
# (or virtqemud/virtlxcd) after installing or removing this file.
#
# The exit status libvirt sees is decided here, whatever happens to the program run below:
# non-zero only at `started begin`, and only when cgctl refused on purpose (its status
# {refused}) or, strict, when cgctl cannot run at all. Everything else exits 0 (docs/hook.md).
prog={prog}
strict={strict}  # yes: --strict, no: --no-strict, empty: $CGCTL_HOOK_STRICT, then config
config={config}
journal={journal}  # empty: the hook resolves it (config file, then the default)
early={early}
run=${{CGCTL_HOOK_RUN_DIR:-{run}}}  # the appliers' lock, go and result files; requests

drain() {{  # stdin read to its end with the shell's own `read`: no process started
    [ -t 0 ] || while IFS= read -r _l; do :; done
}}

case "$2 $3" in
{handled}) ;;
'release end')  # the guest is gone: the go and result files of its last start go too (no
    # Python; one `rm` only when there is something to remove), unless an applier holds the
    # guest's lock (a new start has begun: it removes them itself when it takes the lock)
    case $1 in
    ''|.|..|*/*|*'
'*) ;;
    *) go="$run/early-{driver}-$1.go"
       res="$run/early-{driver}-$1.result"
       if [ ! -e "$run/early-{driver}-$1.lock" ] && {{ [ -e "$go" ] || [ -e "$res" ]; }}; then
           rm -f -- "$go" "$res" 2>/dev/null
       fi ;;
    esac
    drain
    exit 0 ;;
*)  # nothing for cgctl to do: answered here without starting Python. No output (libvirt
    # takes the output of migrate/restore as the new domain XML); stdin read to its end.
    drain
    exit 0 ;;
esac

# Fast paths (docs/hook.md, "The start without Python"): an applier, this hook's own (launched
# by Python at `prepare begin`) or the service's (handed the start here), holds the guest's lock
# file for the whole start and answers `started begin` through the go and result files. Any
# doubt falls through to Python below, which decides and maps as it always has.
fast=
case $1 in
''|.|..|*/*|*'
'*) ;;
*) [ -d "$run" ] && command -v flock >/dev/null 2>&1 && fast=1 ;;
esac
lock="$run/early-{driver}-$1.lock"
# Locks the shell tests (docs/hook.md): a holder writes "PID TICKS" (its start, field 22 of
# /proc/PID/stat) into its lock file once it holds it, empties the file before letting go and
# removes a guest's lock file before that. Read with builtins: no process started.
alive() {{  # the holder named in the lock file $1 is alive (same PID and same start: not reused)
    _p= _t= _s=
    read -r _p _t _s 2>/dev/null <"$1"
    case "$_p:$_t" in *[!0-9:]*|:*|*:) return 1 ;; esac
    read -r _s 2>/dev/null </proc/"$_p"/stat
    _s=${{_s##*) }}
    set -- $_s
    [ "${{20-}}" = "$_t" ]
}}
held() {{  # another process holds the lock file $1; never creates it
    [ -e "$1" ] || return 1  # an applier takes it with the file there and removes it first
    alive "$1" && return 0
    flock -n -E 75 9 2>/dev/null 9<"$1"  # any doubt (empty, stale, being written): the kernel
    [ $? -eq 75 ]
}}
if [ -n "$fast" ]; then
    case "$2 $3" in
    'prepare begin'|'start begin')
        if held "$lock"; then
            drain
            exit 0  # an applier has this start already
        fi
        req="$run/{request}{driver}-$1"
        if [ "$2" = start ] && [ -e "$req" ]; then
            rm -f "$req"  # the service did not take it: the hook does the work itself
        elif [ "$2" = prepare ] && alive "$run/{service}"; then
            # the service runs: hand it the start (it takes the guest's lock at once). No
            # flock(1) on doubt: a service not seen is the hook working alone, always correct;
            # one seen but gone leaves the request to `start begin`, which runs the hook.
            # The per-line `read` loop below costs less than a `cat` process for a domain
            # XML of a few KiB (docs/performance.md §2 F)
            if {{ printf 'journal=%s\nconfig=%s\nstrict=%s\nearly=%s\n\n' "$journal" \
                       "$config" "$strict" "$early"
                  while IFS= read -r _l || [ -n "$_l" ]; do printf '%s\n' "$_l"; done
               }} >"$req" 2>/dev/null; then
                exit 0
            fi
            rm -f "$req"
            exit 0  # stdin is spent; `start begin` runs the hook itself
        fi ;;
    'started begin')
        # the applier applies again as the authority and answers our token ($$)
        if [ -e "$lock" ] && printf '%s\n' "$$" 2>/dev/null >"$run/early-{driver}-$1.go"; then
            flock -s -w {wait} 9 2>/dev/null 9<"$lock"  # until it is done, or gone
            r=
            [ -r "$run/early-{driver}-$1.result" ] && \
                IFS= read -r r 2>/dev/null <"$run/early-{driver}-$1.result"
            if [ "$r" = "ok $$" ]; then
                drain
                exit 0
            fi
        fi ;;
    esac
fi

# from /: `python -c` (and `-m`) put the working directory first on sys.path, and libvirtd's is not
# ours to choose (a `cgctl` directory there would be the code that runs)
cd / || exit 0
{env}=1 {cmd} {driver} "$@"
rc=$?
[ "$rc" -eq 0 ] && exit 0
if [ "$rc" -eq {refused} ] && [ "$2 $3" = 'started begin' ]; then
    exit 1  # refused on purpose; cgctl said why
fi
drain  # what a failed run left unread

is_strict() {{
    case $strict in yes) return 0 ;; no) return 1 ;; esac
    v=${{CGCTL_HOOK_STRICT-}}
    v=${{v#"${{v%%[![:space:]]*}}"}}
    v=${{v%"${{v##*[![:space:]]}}"}}
    case $v in
    1|[yY][eE][sS]|[tT][rR][uU][eE]|[oO][nN]) return 0 ;;
    ?*) return 1 ;;
    esac
    # a top-level `hook_strict = true` line of the configuration file (before any [table])
    [ "$(sed -n -e '/^[[:space:]]*\\[/q' -e 's/^[[:space:]]*hook_strict[[:space:]]*=[[:space:]]*\\([a-z]*\\)[[:space:]]*\\(#.*\\)\\{{0,1\\}}$/\\1/p' \\
        "$config" 2>/dev/null)" = true ]
}}

case $rc in
126) why="$prog cannot be executed (exit 126)" ;;
127) why="$prog or its interpreter not found (exit 127)" ;;
*)  if [ "$rc" -gt 128 ]; then
        why="$prog killed by signal $((rc - 128)) (exit $rc)"
    else
        why="$prog failed (exit $rc: cgctl missing, not importable or crashed; see above)"
    fi ;;
esac
status=0
case "$2 $3" in
'started begin')
    if is_strict; then
        status=1
        after="refusing the start (hook_strict: the guest must not run without its limits)"
    else
        after="the guest starts without its limits (not strict)"
    fi ;;
'reconnect begin') after="guest left running" ;;
*) after="the start goes on" ;;
esac
line="cgctl hook: {driver} guest=$1 op=$2: cgctl cannot run: $why; $after"
printf '%s\\n' "$line" >&2
if command -v logger >/dev/null 2>&1; then
    logger -t cgctl-hook -p daemon.err "$line" </dev/null >/dev/null 2>&1
fi
exit $status
"""


def script_text(driver: str, command, strict=None, config_file: str = consts.CONFIG_PATH,
                journal=None, early=None) -> str:
    """The script installed as ``<driver>.d/cgctl``: runs ``command DRIVER ARGS...`` for the
    calls cgctl acts on, answers the others itself, and maps every outcome to an exit status.

    ``strict`` (True, False, None: decided at the call) is the hook's ``--strict`` option,
    repeated here for when ``command`` cannot run at all.
    """
    import shlex
    q = shlex.quote
    return _SCRIPT.format(
        marker=MARKER, driver=driver, prog=q(str(command[0])), config=q(config_file),
        strict={True: "yes", False: "no", None: "''"}[strict],
        early={True: "yes", False: "no", None: "''"}[early], journal=q(journal or ""),
        run=q(consts.HOOK_RUN_DIR), request=REQUEST_PREFIX, service=SERVICE_LOCK,
        wait=f"{STARTED_WAIT:g}",
        handled="|".join(q(f"{op} {sub}") for op, sub in ACTIONS),
        env=SCRIPT_ENV, refused=EXIT_SCRIPT_REFUSE,
        cmd=" ".join(q(str(a)) for a in command))


def is_ours(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace").splitlines()[:3]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    return MARKER in head


# What a Python runs: `-c`, not `-m cgctl.hook`: runpy's imports (importlib.util, contextlib)
# cost ~4 ms of every call libvirt waits for. sys.path[0] is the working directory either way
# (the script runs it from /).
ENTRY = "import sys; from cgctl.hook.main import main; sys.exit(main(sys.argv[1:]))"


def hook_command(cgctl: str, opts: Options) -> list:
    """What the installed script executes (before the driver word and libvirt's arguments)."""
    if os.path.basename(cgctl).startswith("python"):
        return [cgctl, "-c", ENTRY, *opts.argv()]
    return [cgctl, "hook", "--", *opts.argv()]


def install(hooks_dir: str, command, drivers=DRIVERS, opts: Options = None) -> list:
    """Install our script into ``<hooks_dir>/<driver>.d/``; returns [(path, what happened)].

    ``opts``: the hook's options in ``command`` (their strictness and configuration file are
    repeated for the script, see script_text). A file there that is not ours is never touched
    (CgctlError naming it).
    """
    opts = opts or Options()
    from cgctl.errors import CgctlError
    done = []
    for driver in drivers:
        d = os.path.join(hooks_dir, f"{driver}.d")
        path = os.path.join(d, SCRIPT_NAME)
        if os.path.lexists(path) and not is_ours(path):
            raise CgctlError(f"{path} exists and was not installed by cgctl: left as it is "
                             "(move it away, or install cgctl's hook by hand under another "
                             "name)", path=path)
        os.makedirs(d, mode=0o755, exist_ok=True)
        text = script_text(driver, command, opts.strict, opts.config_file, opts.journal,
                           opts.early)
        existed = os.path.exists(path)
        tmp = f"{path}.cgctl-tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        done.append((path, "updated" if existed else "installed"))
    return done


def uninstall(hooks_dir: str, drivers=DRIVERS) -> list:
    done = []
    for driver in drivers:
        path = os.path.join(hooks_dir, f"{driver}.d", SCRIPT_NAME)
        if not os.path.lexists(path):
            done.append((path, "absent"))
        elif is_ours(path):
            os.unlink(path)
            done.append((path, "removed"))
            # the <driver>.d that install made: the hooks directory goes back to how the
            # operator had it (a directory with their own hooks in it stays)
            try:
                os.rmdir(os.path.dirname(path))
                done.append((os.path.dirname(path), "removed (empty)"))
            except OSError:
                pass
        else:
            done.append((path, "kept (not installed by cgctl)"))
    return done


def other_hooks(hooks_dir: str, drivers=DRIVERS) -> list:
    """The operator's own hooks beside ours (kept, and still run by libvirt)."""
    found = []
    for driver in drivers:
        single = os.path.join(hooks_dir, driver)
        if os.path.isfile(single):
            found.append(single)
        d = os.path.join(hooks_dir, f"{driver}.d")
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        found += [os.path.join(d, n) for n in names
                  if n != SCRIPT_NAME and not n.startswith(f"{SCRIPT_NAME}.cgctl-tmp")]
    return found


def _journal_to_bake(journal, opts: Options):
    """The journal to write into the script: only one the hook would not find by itself (libvirt
    runs it with an empty environment), so that it reads the config file's ``journal`` at each
    call, as the CLI and the service do (cgctl.config.resolve)."""
    from cgctl.config import resolve
    quiet = lambda m: None  # noqa: E731 (a broken file: the hook says so at each call)
    wanted = resolve(opts.config_file, {"journal": journal}, on_error=quiet).journal
    own = resolve(opts.config_file, None, environ={}, on_error=quiet).journal
    return None if wanted == own else wanted


def install_main(verb: str, args, opts: Options, ctl) -> int:
    import argparse
    from cgctl.errors import CgctlError
    p = argparse.ArgumentParser(prog=f"cgctl hook {verb}", allow_abbrev=False)
    p.add_argument("--hooks-dir", default=consts.LIBVIRT_HOOKS_DIR,
                   help="libvirt's hooks directory (default %(default)s)")
    p.add_argument("--drivers", default=",".join(DRIVERS), help="qemu,lxc (default)")
    if verb == "install":
        p.add_argument("--cgctl", default=sys.executable,
                       help="the python (with cgctl installed) or cgctl executable the hook "
                            "runs (default: this python, %(default)s)")
        p.add_argument("--journal", default=None, help="journal file the hook uses")
        p.add_argument("--config-file", default=None)
        g = p.add_mutually_exclusive_group()
        g.add_argument("--strict", dest="strict", action="store_true", default=None,
                       help="refuse to start a guest whose limits cannot be applied")
        g.add_argument("--no-strict", dest="strict", action="store_false")
        g = p.add_mutually_exclusive_group()
        g.add_argument("--early-apply", dest="early", action="store_true", default=None)
        g.add_argument("--no-early-apply", dest="early", action="store_false",
                       help="apply only at `started begin` (after the vCPUs run)")
    try:
        a = p.parse_args(args)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    drivers = [d for d in a.drivers.split(",") if d]
    if any(d not in DRIVERS for d in drivers):
        print(f"cgctl hook {verb}: error: --drivers takes qemu and/or lxc", file=sys.stderr)
        return EXIT_USAGE
    try:
        if verb == "uninstall":
            for path, what in uninstall(a.hooks_dir, drivers):
                print(f"{path}: {what}")
        else:
            if a.config_file:
                opts.config_file = os.path.abspath(a.config_file)
            opts.journal = _journal_to_bake(a.journal or opts.journal, opts)
            if a.strict is not None:
                opts.strict = a.strict
            if a.early is not None:
                opts.early = a.early
            cgctl = a.cgctl if os.path.isabs(a.cgctl) else os.path.abspath(a.cgctl)
            for path, what in install(a.hooks_dir, hook_command(cgctl, opts), drivers, opts):
                print(f"{path}: {what}")
            for other in other_hooks(a.hooks_dir, drivers):
                print(f"{other}: kept (libvirt runs it too)")
        print("libvirtd reads the hooks directory only when it starts: restart libvirtd "
              "(or virtqemud and virtlxcd) now")
    except CgctlError as exc:
        print(f"cgctl hook {verb}: error: {exc}", file=sys.stderr)
        return EXIT_REFUSE
    except OSError as exc:
        print(f"cgctl hook {verb}: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_REFUSE
    return EXIT_OK
