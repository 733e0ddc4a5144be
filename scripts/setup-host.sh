#!/usr/bin/env bash
# Make this Debian 12 machine ready for dockvisor: packages, daemons, virtualenv.
# Safe to run again: it only does what is missing, and says what it did.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "dockvisor setup needs root (apt-get, libvirtd, /dev/kvm); run it as root" >&2
    exit 1
fi

# 1. Debian packages: libvirt + QEMU, the tools the guest image build uses, Python, and
#    the browser the web interface's tests drive (chromium, with a font to draw text).
PACKAGES=(libvirt-daemon-system libvirt-clients libvirt-dev pkg-config qemu-system-x86 qemu-utils
          e2fsprogs binutils cpio gcc python3 python3-venv python3-dev ca-certificates
          postgresql curl procps chromium fonts-dejavu-core)
# npm fetches the web interface's front-end libraries (step 6); Debian's node if none.
command -v npm >/dev/null || PACKAGES+=(nodejs npm)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The guest image is made of Debian packages that apt must know about.
if ! apt-cache show --no-all-versions docker.io linux-image-cloud-amd64 >/dev/null 2>&1; then
    need_update=1
else
    need_update=0
fi
if [ ${#missing[@]} -gt 0 ] || [ "$need_update" = 1 ]; then
    say "apt-get update"
    apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. /dev/kvm as Debian's udev rule would leave it (group kvm, 0660). Without udev it is
#    root-only, and libvirt then re-probes QEMU for ~55 s on every call (its cached
#    capabilities say KVM is there, its access check says it is not).
if [ -c /dev/kvm ] && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    say "giving /dev/kvm to group kvm (mode 0660), as udev would"
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
fi

# 3. Daemons (no systemd here): start them if they are not running.
if ! pgrep -x virtlogd >/dev/null; then
    say "starting virtlogd"
    virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
    say "starting libvirtd"
    libvirtd -d
    for _ in $(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
fi

# 4. The virtualenv with dockvisor and its dev tools, reinstalled when pyproject changes.
if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
stamp=.venv/.dockvisor-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing dockvisor into .venv"
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi

# 5. A docker CLI (client only) for the tests and for users of the engine gateway. Many
#    machines have one; otherwise take the client binary out of Debian's docker.io
#    package into .venv/bin. Installing docker.io itself would start a dockerd here.
if ! command -v docker >/dev/null && [ ! -x .venv/bin/docker ]; then
    say "extracting the docker CLI from Debian's docker.io into .venv/bin"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq docker.io >/dev/null)
    dpkg-deb --fsys-tarfile "$tmp"/docker.io_*.deb | tar -x -C "$tmp" ./usr/bin/docker
    install -m 0755 "$tmp/usr/bin/docker" .venv/bin/docker
    rm -rf "$tmp"
fi

# 6. The web interface's front-end libraries (htmx, xterm.js, noVNC, uPlot, Swagger UI,
#    axe-core for the tests) from the npm registry into node_modules/, as package-lock.json
#    pins them; again when the lock file changes. No package's install script is run.
stamp=node_modules/.dockvisor-installed
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    say "installing the web interface's libraries into node_modules (npm ci)"
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
    echo "$want" > "$stamp"
fi
