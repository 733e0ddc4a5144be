#!/usr/bin/env bash
# The narrated walk-through `make demo` runs: every step is a real dockvisor command on
# real VMs under qemu:///system. It ends with the VM `demo` running, for you to explore.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

bold=$'\033[1m'; dim=$'\033[2m'; off=$'\033[0m'
say() { printf '\n%s# %s%s\n' "$bold" "$*" "$off"; }
run() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }

# The docker CLI talks to the VM's engine. Use the one on PATH, else the one in the
# Debian docker.io package the guest image was built from.
if ! command -v docker >/dev/null; then
    deb=$(ls -t "${XDG_CACHE_HOME:-$HOME/.cache}"/dockvisor/debs/docker.io_*.deb 2>/dev/null | head -1)
    if [ -z "$deb" ]; then echo "no docker CLI and no docker.io package in the cache" >&2; exit 1; fi
    tmp=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/docker
    install -m 0755 "$tmp/usr/bin/docker" .venv/bin/docker
    rm -rf "$tmp"
fi

for old in demo demo-clone; do
    if dockvisor vm show "$old" >/dev/null 2>&1; then
        say "Removing the VM '$old' a previous demo left"
        run dockvisor vm rm --force "$old"
    fi
done

say "The hypervisor dockvisor drives (libvirt URI qemu:///system by default)"
run dockvisor host

say "The Docker-ready template, built from Debian packages only"
run dockvisor template list

say "Create a Docker-ready VM of exactly 2 vCPUs and 1 GiB, with room to grow live to 4 and 2 GiB"
run dockvisor vm create demo --template docker-ready --vcpus 2 --memory 1GiB --max-vcpus 4 --max-memory 2GiB

say "Point the docker CLI at it and run a container"
run dockvisor vm endpoint demo
DOCKER_HOST=$(dockvisor vm endpoint demo); export DOCKER_HOST
run docker run -d --name web busybox:latest httpd -f -p 8080 -h /etc
run docker ps --format 'table {{.Names}}\t{{.Image}}\t{{.Status}}'

say "Take a snapshot while it is clean (disk and memory)"
run dockvisor vm snapshot demo clean --description "one web container"

say "Break it: start something we will regret"
run docker run -d --name mistake busybox:latest sh -c 'while :; do :; done'
run docker ps --format 'table {{.Names}}\t{{.Status}}'

say "Roll back: the VM is exactly as it was, running, in seconds"
run dockvisor vm revert demo clean
run docker ps --format 'table {{.Names}}\t{{.Status}}'

say "Clone it for another test (while it runs) and boot the clone"
run dockvisor vm clone demo demo-clone --start
run env DOCKER_HOST="$(dockvisor vm endpoint demo-clone)" docker ps -a --format 'table {{.Names}}\t{{.Status}}'
run dockvisor vm rm --force demo-clone

say "Grow it live: 3 vCPUs and 1.5 GiB, no reboot; a new container sees them"
run docker run --rm busybox:latest sh -c 'echo "vCPUs: $(nproc)"; grep MemTotal /proc/meminfo'
run dockvisor vm set demo --vcpus 3 --memory 1536MiB
run docker run --rm busybox:latest sh -c 'echo "vCPUs: $(nproc)"; grep MemTotal /proc/meminfo'

say "Beyond its maximum, a change waits for the next boot and says so"
run dockvisor vm set demo --memory 3GiB
run dockvisor vm list

cat <<EOF

${bold}The VM 'demo' is running. Explore it:${off}
  export PATH=$PWD/.venv/bin:\$PATH
  export DOCKER_HOST=$(dockvisor vm endpoint demo)
  docker ps
  dockvisor vm show demo
  dockvisor vm snapshots demo
  dockvisor vm revert demo clean
  dockvisor vm stop demo && dockvisor vm start demo     # boots with the pending 3 GiB
  dockvisor vm rm --force demo                          # when you are done
EOF
