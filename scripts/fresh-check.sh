#!/usr/bin/env bash
# Run the README's two commands on a fresh Debian 12, on this machine: a clean root made
# with debootstrap, a clean clone of this repository in /root/dockvisor, and `make demo`
# and `make test` run inside it as root, exactly as the README says. Prints each command,
# its exit status and duration (and pytest's summary line), and exits non-zero if any
# failed.
#
# Usage (as root, from anywhere in the repository):
#   scripts/fresh-check.sh                  # make demo, then make test (the README)
#   scripts/fresh-check.sh --only setup     # scripts/setup-host.sh + make lint: no VM, quick
#   scripts/fresh-check.sh --demo | --test  # one of the two (both flags: both)
# Options:
#   --worktree      check the working tree as it is (uncommitted work; git-ignored files
#                   such as .venv left out) instead of a clean clone of HEAD
#   --keep          leave the run's root for inspection (chroot into it afterwards)
#   --rebuild-base  debootstrap the cached base again
# Environment: FRESH_CACHE (default /var/cache/dockvisor-fresh), FRESH_MIRROR (default
# http://deb.debian.org/debian), FRESH_STEP_TIMEOUT (seconds per command, default 5400).
#
# The base root is made once into $FRESH_CACHE/base and copied for each run, so every run
# starts from the same fresh machine: debootstrap's default variant (Debian's "required"
# and "important" packages: what the installer puts on every machine, procps included,
# make not) with the apt sources a Debian 12 install has. If the root has no `make`, the
# run installs it first, as its own line in the summary (the README's commands need it).
# Logs stay in $FRESH_CACHE/logs/<run>.
#
# What a chroot on this machine needs, and why (measured: /work/shared/notes/
# fresh-debian-check.md). None of it changes what the project's own setup does inside:
#  1. Its own PID namespace (unshare --pid --fork --mount-proc): otherwise `pgrep -x
#     libvirtd` in setup-host.sh sees the host's libvirtd, the chroot's is never started,
#     and every qemu:///system call fails. It also bounds the run: when the namespace's
#     first process exits, the kernel kills every process in it (the chroot's libvirtd,
#     virtlogd, QEMU, the demo's server), so nothing of the run outlives it.
#  2. Its own mount namespace, private: every mount below is made in it and disappears
#     with it, even if this script is killed with SIGKILL; the host never sees them (and
#     removing the run's root can never reach into the host's /dev or /sys).
#  3. ROOT bind-mounted onto itself: libvirt gives each QEMU a private mount namespace,
#     which needs `/` to be a mount point ("Failed disable mount propagation out of the
#     root filesystem" otherwise).
#  4. `namespaces = []` in the chroot's /etc/libvirt/qemu.conf: inside a chroot libvirt
#     cannot build QEMU's private /dev from the bound host /dev ("Could not open
#     '/dev/urandom'"). It must be there after libvirt is installed and before libvirtd
#     starts, and setup-host.sh does both in one run, so this hooks in between: an apt
#     hook (DPkg::Post-Invoke) in the chroot sets it right after setup's apt-get has
#     installed libvirt (setup installs it itself, as on a fresh machine), and a
#     policy-rc.d keeps package scripts from starting libvirtd (or PostgreSQL on the
#     host's port 5432) before that, as Debian's chroot convention has it. A real machine
#     keeps libvirt's default.
#  5. The workplace's egress proxy has its own certificate authority: its certificates
#     go into the chroot's /usr/local/share/ca-certificates (setup's ca-certificates
#     package picks them up) and PIP_CERT points pip at the bundle. A machine outside
#     this workplace needs neither.
#  6. A clean environment (env -i with PATH, HOME and PIP_CERT only): nothing of this
#     image leaks in (no /usr/local/bin, no docker CLI, no pip configuration).
#  7. /dev, /dev/pts, /dev/shm and /sys bound from the host (non-recursively: the host's
#     cgroup hierarchies stay out, so the chroot's libvirtd cannot touch the host VMs'
#     cgroups). /dev/kvm is the exception: a node of the run's own, root-only as on a
#     machine without udev, is mounted over it, so setup's chgrp/chmod of /dev/kvm acts
#     on that node and not on the host's (whose group id may differ from the chroot's).
#  8. The host's network: apt and pip need it, and the project's VMs forward their
#     Docker ports to 127.0.0.1 as on a real machine. If 8080/8081 are taken on the host,
#     the demo gets free ports through DOCKVISOR_PORT/DOCKVISOR_GATEWAY_PORT (it honours
#     them) and this script says so before it starts.
# `make demo` serves until Ctrl-C; DOCKVISOR_DEMO_EXIT=1 (honoured by scripts/demo.sh)
# makes it stop the server and exit after its walk-through instead.
# What still differs from a real machine: no systemd or udev runs (setup starts the
# daemons itself, as it does wherever they are not running), QEMU gets no cgroups, and
# the host's network and loopback ports are shared with whatever else runs here.
set -euo pipefail

REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
CACHE=${FRESH_CACHE:-/var/cache/dockvisor-fresh}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
STEP_TIMEOUT=${FRESH_STEP_TIMEOUT:-5400}
SUITE=bookworm
BASE_KIND="debootstrap $SUITE (default variant), Debian 12 apt sources"

usage() { awk '/^# Usage/{p=1} /^# The base root/{p=0} p' "$0" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

worktree=0 keep=0 rebuild=0 only="" want_demo=0 want_test=0
while [ $# -gt 0 ]; do
    case $1 in
        --worktree) worktree=1 ;;
        --keep) keep=1 ;;
        --rebuild-base) rebuild=1 ;;
        --only) [ "${2:-}" = setup ] || usage; only=setup; shift ;;
        --only=setup) only=setup ;;
        --demo) want_demo=1 ;;
        --test) want_test=1 ;;
        -h|--help) usage 0 ;;
        *) echo "fresh-check: unknown argument $1" >&2; usage ;;
    esac
    shift
done
if [ -n "$only" ] && [ $((want_demo + want_test)) -gt 0 ]; then
    echo "fresh-check: --only setup runs no demo or test" >&2; exit 2
fi
if [ -z "$only" ] && [ $((want_demo + want_test)) -eq 0 ]; then want_demo=1 want_test=1; fi
[ "$(id -u)" -eq 0 ] || { echo "fresh-check: run it as root (debootstrap, chroot, mounts)" >&2; exit 1; }

say() { printf '\033[1m[fresh-check] %s\033[0m\n' "$*" >&2; }

# -- cleanup: whatever happens from here on --------------------------------------------

RUN="" NS_PID="" BUILD_PID="" LOGS=""

# Processes whose root directory is the run's root (those left of the namespace).
processes_in_root() {
    local p
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/root" 2>/dev/null)" = "$RUN" ] && echo "${p#/proc/}"
    done
    return 0
}

# shellcheck disable=SC2317  # also used by the EXIT trap
mounts_under() { findmnt -rn -o TARGET | awk -v r="$1" '$0 == r || index($0, r "/") == 1'; }

# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local rc=$? left m
    trap - EXIT INT TERM HUP
    for pid in "$NS_PID" "$BUILD_PID"; do
        # unshare ignores SIGINT and SIGTERM while it waits for its child: SIGKILL it.
        # With --kill-child its end SIGKILLs the child, the namespace's init, and with
        # that the kernel ends every process of the namespace.
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            say "interrupted: ending the run's namespaces"
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$BUILD_PID" ] && [ -d "$CACHE/base.partial" ] && [ ! -e "$CACHE/base" ]; then
        [ -z "$(mounts_under "$CACHE/base.partial")" ] && rm -rf --one-file-system "$CACHE/base.partial"
    fi
    if [ -n "$RUN" ] && [ -d "$RUN" ]; then
        for _ in $(seq 50); do
            left=$(processes_in_root)
            [ -z "$left" ] && break
            sleep 0.2
        done
        if [ -n "$left" ]; then
            say "processes of the run still alive, killing them: ${left//$'\n'/ }"
            # shellcheck disable=SC2086  # pids of the run's namespace, started by this script
            kill -KILL $left 2>/dev/null || true
            sleep 0.5
        fi
        for m in $(mounts_under "$RUN" | sort -r); do
            say "unmounting $m (left mounted)"
            umount -l "$m" || true
        done
        if [ -n "$LOGS" ] && [ -d "$RUN/fresh-check" ]; then
            mkdir -p "$LOGS"
            cp -a "$RUN/fresh-check/logs/." "$RUN/fresh-check/results" "$LOGS/" 2>/dev/null || true
        fi
        if [ "$keep" = 1 ]; then
            say "kept the run's root: $RUN (enter it: chroot $RUN /bin/bash)"
        elif [ -n "$(mounts_under "$RUN")" ]; then
            say "something is still mounted under $RUN: not removing it"
        else
            rm -rf --one-file-system "$RUN"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# -- the base root: debootstrap once --------------------------------------------------

mkdir -p "$CACHE/runs" "$CACHE/logs"
exec 9>"$CACHE/.lock"
flock 9  # one base build at a time; runs themselves do not share anything
if [ "$rebuild" = 1 ] && [ -d "$CACHE/base" ]; then
    say "removing the cached base root"
    rm -rf --one-file-system "$CACHE/base"
fi
if [ "$(cat "$CACHE/base/.fresh-check-complete" 2>/dev/null)" != "$BASE_KIND" ]; then
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    say "debootstrap $SUITE into $CACHE/base (once per kind of base; a few minutes)"
    rm -rf --one-file-system "$CACHE/base.partial" "$CACHE/base"
    # In namespaces of its own: the /proc and /sys debootstrap mounts in the target, and
    # its dpkg runs, end with it even if it is interrupted.
    unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
        debootstrap "$SUITE" "$CACHE/base.partial" "$MIRROR" \
        > "$CACHE/logs/debootstrap.log" 2>&1 &
    BUILD_PID=$!
    wait "$BUILD_PID" || { echo "debootstrap failed; see $CACHE/logs/debootstrap.log" >&2; exit 1; }
    BUILD_PID=""
    # The apt sources a Debian 12 installation has (debootstrap writes only the first).
    cat > "$CACHE/base.partial/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    echo "$BASE_KIND" > "$CACHE/base.partial/.fresh-check-complete"
    mv "$CACHE/base.partial" "$CACHE/base"
fi
flock -u 9

# -- this run's root: a copy of the base, the repository, the chroot's adaptations ---

ID=$(date -u +%Y%m%d-%H%M%S)-$$
RUN="$CACHE/runs/$ID"
LOGS="$CACHE/logs/$ID"
say "copying the base root to $RUN"
mkdir -p "$RUN"
cp -a "$CACHE/base/." "$RUN/"
rm -f "$RUN/.fresh-check-complete"

DEST="$RUN/root/dockvisor"
commit=$(git -C "$REPO" rev-parse HEAD)
git clone -q --no-hardlinks "$REPO" "$DEST"
git -C "$DEST" checkout -q --detach "$commit"
source_text="clean clone of HEAD ${commit:0:7}"
if [ "$worktree" = 1 ]; then
    # The working tree as it is: tracked and untracked files that git does not ignore
    # (so no .venv, caches or build output), and files deleted in it deleted here too.
    list="$RUN/.worktree-files"
    git -C "$REPO" ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [ -e "$REPO/$f" ] || [ -L "$REPO/$f" ]; then printf '%s\0' "$f"; fi
        done > "$list"
    tar -C "$REPO" --null -T "$list" -cf - | tar -C "$DEST" -xf -
    git -C "$REPO" ls-files -z --deleted | (cd "$DEST" && xargs -0 -r rm -f --)
    rm -f "$list"
    changed=$(git -C "$DEST" status --porcelain | wc -l)
    source_text="working tree of ${commit:0:7} ($changed files differ from HEAD)"
fi

mkdir -p "$RUN/fresh-check/logs"
# Trap 5: the proxy's certificate authority, for setup's ca-certificates to pick up.
mkdir -p "$RUN/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$RUN/usr/local/share/ca-certificates/" 2>/dev/null || true
# Trap 4: no daemon started by package scripts; libvirt's namespaces off once installed.
printf '#!/bin/sh\n# fresh-check: package scripts start no daemon in this chroot\nexit 101\n' \
    > "$RUN/usr/sbin/policy-rc.d"
chmod 0755 "$RUN/usr/sbin/policy-rc.d"
cat > "$RUN/fresh-check/libvirt-in-chroot.sh" <<'EOF'
#!/bin/sh
# fresh-check: QEMU's private /dev cannot be built in a chroot (see scripts/fresh-check.sh).
conf=/etc/libvirt/qemu.conf
if [ -f "$conf" ] && ! grep -q '^namespaces = \[\]' "$conf"; then
    printf '\n# fresh-check (chroot only)\nnamespaces = []\n' >> "$conf"
fi
EOF
chmod 0755 "$RUN/fresh-check/libvirt-in-chroot.sh"
echo 'DPkg::Post-Invoke { "/fresh-check/libvirt-in-chroot.sh"; };' \
    > "$RUN/etc/apt/apt.conf.d/99fresh-check"
cp /etc/resolv.conf "$RUN/etc/resolv.conf"
grep -qs '^127.0.0.1' "$RUN/etc/hosts" || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >> "$RUN/etc/hosts"
# Trap 7: the run's own /dev/kvm, root-only as on a machine without udev.
if [ -c /dev/kvm ]; then
    mknod -m 0600 "$RUN/fresh-check/kvm" c "$((16#$(stat -c %t /dev/kvm)))" "$((16#$(stat -c %T /dev/kvm)))"
fi

# -- the commands ------------------------------------------------------------------------

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
demo_env="DOCKVISOR_DEMO_EXIT=1"
if port_taken 8080 || port_taken 8081; then
    read -r p1 p2 < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
    demo_env+=" DOCKVISOR_PORT=$p1 DOCKVISOR_GATEWAY_PORT=$p2"
    say "8080/8081 are taken on this machine: the demo serves on $p1/$p2"
fi
# The README's commands start with `make`; a fresh Debian 12 has none: install it first,
# as its own step, so the summary shows that the README must say so.
{
    if [ ! -x "$RUN/usr/bin/make" ]; then
        printf 'prereq\tapt-get update -qq && apt-get install -y -qq make\n'
    fi
    if [ "$only" = setup ]; then
        printf 'setup\tscripts/setup-host.sh\n'
        printf 'lint\tmake lint\n'
    fi
    if [ "$want_demo" = 1 ]; then printf 'demo\t%s make demo\n' "$demo_env"; fi
    if [ "$want_test" = 1 ]; then printf 'test\tmake test\n'; fi
} > "$RUN/fresh-check/steps"

# Runs inside the chroot as the first process of its PID namespace: each command in turn,
# its output to the terminal and to a log, its status and duration to `results`.
cat > "$RUN/fresh-check/run.sh" <<'EOF'
#!/bin/bash
set -uo pipefail
timeout_s=$1
cd /root/dockvisor
: > /fresh-check/results
while IFS=$'\t' read -r label cmd; do
    printf '\n\033[1m[fresh-check] # %s\033[0m\n' "$cmd"
    start=$(date +%s)
    timeout --kill-after=60 "$timeout_s" bash -c "$cmd" < /dev/null 2>&1 | tee "/fresh-check/logs/$label.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$label" "$rc" "$(($(date +%s) - start))" "$cmd" >> /fresh-check/results
done < /fresh-check/steps
# The demo leaves its VM running: stop the domains of this root's libvirtd (everything of
# the namespace ends with this process anyway).
if command -v virsh >/dev/null && pgrep -x libvirtd >/dev/null; then
    for dom in $(virsh -c qemu:///system list --name 2>/dev/null); do
        virsh -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
    done
fi
EOF

# Runs on the host side, in the private mount namespace (trap 2): the mounts, then the
# chroot in a PID namespace of its own (trap 1) with a clean environment (trap 6). It is
# started in the background (so that this script's traps run at once on a signal), which
# makes bash ignore SIGINT and SIGQUIT in it: `env --default-signal` gives the chroot the
# default dispositions back, as a login shell has them (tests send signals to servers).
# shellcheck disable=SC2016  # expanded by the stage's own bash
STAGE='
set -euo pipefail
RUN=$1 TIMEOUT=$2
mount --bind "$RUN" "$RUN"                       # trap 3: / is a mount point
mount --bind /dev "$RUN/dev"                     # trap 7
mount --bind /dev/pts "$RUN/dev/pts"
if mountpoint -q /dev/shm; then mount --bind /dev/shm "$RUN/dev/shm"; fi
if [ -c "$RUN/fresh-check/kvm" ]; then mount --bind "$RUN/fresh-check/kvm" "$RUN/dev/kvm"; fi
mount --bind /sys "$RUN/sys"
exec unshare --pid --fork --kill-child --mount-proc="$RUN/proc" \
    chroot "$RUN" /usr/bin/env --default-signal -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt /bin/bash /fresh-check/run.sh "$TIMEOUT"
'
say "running in the fresh root ($source_text)"
started=$(date +%s)
unshare --mount --propagation private bash -c "$STAGE" fresh-check-stage "$RUN" "$STEP_TIMEOUT" &
NS_PID=$!
ns_rc=0
wait "$NS_PID" || ns_rc=$?
NS_PID=""
elapsed=$(($(date +%s) - started))

left=$(processes_in_root)
for _ in $(seq 25); do [ -z "$left" ] && break; sleep 0.2; left=$(processes_in_root); done

# -- summary -----------------------------------------------------------------------------

touch "$RUN/fresh-check/results"
duration() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
failed=0
printf '\n\033[1mfresh-check: Debian 12 (%s), %s\033[0m\n' "$SUITE" "$source_text"
while IFS=$'\t' read -r label rc seconds cmd; do
    if [ "$rc" = 0 ]; then status="ok"; else status="FAILED (exit $rc)"; failed=1; fi
    [ "$rc" = 124 ] && status="TIMED OUT after $(duration "$STEP_TIMEOUT")"
    printf '  %-50s %-22s %s\n' "$cmd" "$status" "$(duration "$seconds")"
    log="$RUN/fresh-check/logs/$label.log"
    summary=$(grep -E '(passed|failed|errors?|no tests ran).* in [0-9.]+s' "$log" 2>/dev/null | tail -1 |
              sed -E 's/^=+ //; s/ =+$//' || true)
    if [ -n "$summary" ]; then printf '      pytest: %s\n' "$summary"; fi
    if [ "$label" = prereq ]; then
        if grep -qE 'apt(-get)? install.*[[:space:]]make([[:space:]`]|$)' "$RUN/root/dockvisor/README.md"; then
            printf '      (make is not on a fresh Debian 12; the README says to install it)\n'
        else
            printf '      WARNING: make is not on a fresh Debian 12 and the README does not say to install it\n'
        fi
    fi
    if [ "$rc" != 0 ]; then tail -n 5 "$log" | sed 's/^/      | /'; fi
done < "$RUN/fresh-check/results"
expected=$(wc -l < "$RUN/fresh-check/steps")
ran=$(wc -l < "$RUN/fresh-check/results")
if [ "$ran" -lt "$expected" ]; then
    printf '  %d of %d commands did not run (the chroot ended with status %d)\n' \
        $((expected - ran)) "$expected" "$ns_rc"
    failed=1
fi
printf '  total %s; logs in %s\n' "$(duration "$elapsed")" "$LOGS"
if [ -n "$left" ]; then
    printf '  processes of the run left after its namespace ended: %s (killed now)\n' "${left//$'\n'/ }"
    failed=1
else
    printf '  the namespace ended: no process of the run is left (libvirtd, QEMU, servers)\n'
fi
exit "$failed"
