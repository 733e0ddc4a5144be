#!/usr/bin/env bash
# `make demo`: the dockvisor server on the embedded default (SQLite in the data directory,
# the local qemu:///system host with the Docker-ready template), two accounts, and a
# narrated walk-through of a developer using a delegated sandbox through the API.
# The server keeps running at the end (Ctrl-C stops it; the VM `demo` stays), unless
# DOCKVISOR_DEMO_EXIT=1 (scripted runs, e.g. scripts/fresh-check.sh): then it stops there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DOCKVISOR_DATA_DIR="${DOCKVISOR_DATA_DIR:-$HOME/.local/share/dockvisor}"
PORT="${DOCKVISOR_PORT:-8080}"
GATEWAY_PORT="${DOCKVISOR_GATEWAY_PORT:-8081}"
URL="http://127.0.0.1:$PORT"

bold=$'\033[1m'; dim=$'\033[2m'; off=$'\033[0m'
say() { printf '\n%s# %s%s\n' "$bold" "$*" "$off"; }
run() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@"; }
try() { printf '%s$ %s%s\n' "$dim" "$*" "$off"; "$@" || printf '%s(refused, as it should be)%s\n' "$dim" "$off"; }

# The docker CLI: the one on PATH, else the one from the Debian package of the guest image.
if ! command -v docker >/dev/null; then
    deb=$(ls -t "${XDG_CACHE_HOME:-$HOME/.cache}"/dockvisor/debs/docker.io_*.deb 2>/dev/null | head -1)
    [ -n "$deb" ] || { echo "no docker CLI and no docker.io package in the cache" >&2; exit 1; }
    tmp=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/docker
    install -m 0755 "$tmp/usr/bin/docker" .venv/bin/docker
    rm -rf "$tmp"
fi

for p in "$PORT" "$GATEWAY_PORT"; do
    if python3 - "$p" <<'PY'
import socket, sys
s = socket.socket(); sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
    then
        echo "port $p is in use (another dockvisor?); stop it or set DOCKVISOR_PORT and DOCKVISOR_GATEWAY_PORT" >&2
        exit 1
    fi
done

# Accounts: created once, with generated passwords shown once (or the ones you give in
# DOCKVISOR_ADMIN_PASSWORD / DOCKVISOR_DEVELOPER_PASSWORD, which are (re)set each run).
newpass() { python3 -c 'import secrets; print(secrets.token_urlsafe(12))'; }
declare -A shown=()
for account in admin developer; do
    var="DOCKVISOR_$(echo "$account" | tr a-z A-Z)_PASSWORD"
    given="${!var:-}"
    flags=(); [ "$account" = admin ] && flags=(--admin)
    if [ -n "$given" ]; then
        printf '%s\n' "$given" | dockvisor user create "$account" "${flags[@]}" --password-stdin >/dev/null 2>&1 ||
            printf '%s\n' "$given" | dockvisor user password "$account" --password-stdin >/dev/null
        shown[$account]="$given (from $var)"
    else
        password=$(newpass)
        if printf '%s\n' "$password" | dockvisor user create "$account" "${flags[@]}" --password-stdin >/dev/null 2>&1; then
            shown[$account]="$password"
        else
            shown[$account]="(set when it was created; change it: dockvisor user password $account)"
        fi
    fi
done
ADMIN_TOKEN=$(dockvisor token create "demo-admin-$(date +%s)" --user admin --expires-in-days 1)
DEV_TOKEN=$(dockvisor token create "demo-dev-$(date +%s)" --user developer --expires-in-days 1)

say "Starting the server: SQLite in $DOCKVISOR_DATA_DIR, host 'local' = qemu:///system"
dockvisor serve --port "$PORT" --gateway-port "$GATEWAY_PORT" &
SERVER=$!
# (|| true: the server ends by the signal, and errexit applies in the trap too)
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "$URL/api/v1" >/dev/null && break; sleep 0.2; done
curl -sf "$URL/api/v1" >/dev/null || { echo "the server did not start" >&2; exit 1; }

as_admin() { DOCKVISOR_TOKEN="$ADMIN_TOKEN" dockvisor --server "$URL" "$@"; }
as_dev() { DOCKVISOR_TOKEN="$DEV_TOKEN" dockvisor --server "$URL" "$@"; }
api() { curl -sf -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }

for old in demo demo-clone; do
    as_admin vm show "$old" >/dev/null 2>&1 && as_admin vm rm --force "$old" >/dev/null
done

say "The admin gives the developer a sandbox budget: a resource set of 2 VMs, 4 vCPUs, 4 GiB, 12 GiB of disk"
BUDGET='{"name": "sandbox", "limits": {"vms": 2, "vcpus": 4, "memory": 4294967296, "disk": 12884901888}, "templates": ["docker-ready"], "host_ids": [1], "subjects": ["user:developer"]}'
SET=$(api "$URL/api/v1/resource-sets" | python3 -c 'import json,sys; print(next((s["id"] for s in json.load(sys.stdin) if s["name"]=="sandbox"), ""))')
if [ -z "$SET" ]; then
    SET=$(api -X POST "$URL/api/v1/resource-sets" -d "$BUDGET" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
else
    api -X PUT "$URL/api/v1/resource-sets/$SET" -d "$BUDGET" >/dev/null
fi
echo "resource set 'sandbox' is #$SET"

say "The admin keeps a warm spare of the template: booted once, saved with Docker up (the host's cost)"
run as_admin template warm docker-ready --spares 1
run as_admin template spares

say "The developer, through the API, creates a Docker-ready VM of exactly 2 vCPUs, 1 GiB and a 6 GiB disk: resumed from the spare in seconds"
run as_dev vm create demo --resource-set "$SET" --vcpus 2 --memory 1GiB --disk 6GiB
run as_dev vm list

say "Runs a container in it with dockvisor (the engine speaks only mutual TLS)"
run as_dev docker demo run -d --name web -p 8080:80 busybox:latest httpd -f -p 80 -h /etc
say "...and with the stock docker CLI, through dockvisor's engine gateway, with the developer's token"
run as_dev vm endpoint demo
eval "$(as_dev vm endpoint demo)"
run docker ps --format 'table {{.Names}}\t{{.Status}}\t{{.Ports}}'
run docker exec web sh -c 'echo "inside $(hostname): $(ls /etc | wc -l) files in /etc"'

say "Snapshots it clean, breaks it, rolls it back"
run as_dev vm snapshot demo clean
VM_ID=$(as_admin --json vm show demo | python3 -c 'import json,sys; print(json.load(sys.stdin)["uuid"])')
# ...marked as its clean state: the web page offers it as one "Roll back to clean" button
curl -sf -X PUT -H "Authorization: Bearer $DEV_TOKEN" -H 'Content-Type: application/json' \
    "$URL/api/v1/vms/$VM_ID/clean-snapshot" -d '{"name": "clean"}' >/dev/null
run docker run -d --name mistake busybox:latest sh -c 'while :; do :; done'
run docker ps --format 'table {{.Names}}\t{{.Status}}'
run as_dev vm revert demo clean
run docker ps --format 'table {{.Names}}\t{{.Status}}'

say "Clones it for another test (within the budget)"
run as_dev vm clone demo demo-clone
say "A third VM does not fit the budget"
try as_dev vm create third --resource-set "$SET" --vcpus 1 --memory 512MiB
say "Growing the VM is the developer's, within the budget: with the clone, 3 vCPUs do not fit, nor 8 GiB of disk"
try as_dev vm set demo --vcpus 3
try as_dev vm set demo --disk 8GiB
say "Deleting is not part of the Developer role"
try as_dev vm rm demo-clone
say "The admin deletes the clone; now the developer grows the VM live"
run as_admin vm rm demo-clone
run as_dev vm set demo --vcpus 3 --memory 1536MiB --disk 8GiB
run docker run --rm busybox:latest sh -c 'echo "vCPUs: $(nproc)"; grep MemTotal /proc/meminfo; df -h / | tail -1'
say "A viewer of the VM sees its containers and can change none of them"
newpass | dockvisor user create viewer --password-stdin >/dev/null 2>&1 || true  # once
VIEW_TOKEN=$(dockvisor --json token create "demo-$RANDOM" --user viewer | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
api -X POST "$URL/api/v1/acl" -d "{\"subject\": \"user:viewer\", \"path\": \"/vms/$VM_ID\", \"role\": \"Viewer\"}" >/dev/null || true
as_viewer() { DOCKVISOR_TOKEN="$VIEW_TOKEN" dockvisor --server "$URL" "$@"; }
run as_viewer docker demo ps
try as_viewer docker demo stop web

say "Everything above is in the audit log, in a chain keyed outside the database"
api "$URL/api/v1/audit?limit=8" | python3 -c '
import json, sys
for e in reversed(json.load(sys.stdin)):
    print(e["time"][:19], e["actor"].ljust(10), e["action"].ljust(24), e["result"].ljust(24), e["object"])
'
run dockvisor audit verify

cat <<EOT

${bold}dockvisor is running: open $URL/ in a browser${off}  (API: $URL/api/v1, docs: $URL/api/v1/docs)
  admin      password: ${shown[admin]}
  developer  password: ${shown[developer]}

  Sign in as the developer: the VM 'demo' is there, with its containers (Docker tab),
  its clean snapshot ("Roll back to clean"), its consoles and graphs.
  Or from a shell:
    export PATH=$PWD/.venv/bin:\$PATH
    dockvisor --server $URL login --user developer
    dockvisor --server $URL vm list
    dockvisor --server $URL docker demo ps
    eval "\$(dockvisor --server $URL vm endpoint demo)"; docker ps; docker exec -it web sh
    curl -N -H "Authorization: Bearer \$DOCKVISOR_TOKEN" $URL/api/v1/events   # live events

Ctrl-C stops the server (the VM stays; the next start picks it up).
EOT
if [ "${DOCKVISOR_DEMO_EXIT:-}" = 1 ]; then
    echo "DOCKVISOR_DEMO_EXIT=1: stopping the server (the VM stays)"
    exit 0
fi
wait "$SERVER"
