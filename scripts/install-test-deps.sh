#!/usr/bin/env bash
# Installs the system tools the end-to-end tests start or call: a real sshd,
# nginx, an X/VNC desktop behind websockify, and the command-line helpers.
# Idempotent and quick when everything is already present: apt is only
# touched if some command or package is missing. Meant for Debian 12 as root.
set -euo pipefail

# command -> Debian package that provides it. sshd lives in /usr/sbin, which
# may be absent from PATH for ordinary users, hence the absolute paths.
declare -A NEEDED=(
    [/usr/sbin/sshd]=openssh-server
    [ssh]=openssh-client
    [scp]=openssh-client
    [ssh-keygen]=openssh-client
    [nginx]=nginx
    [Xvfb]=xvfb
    [x11vnc]=x11vnc
    [websockify]=websockify
    [curl]=curl
    [sha256sum]=coreutils
    [nft]=nftables
    [ip]=iproute2
    # loadtest --loss: a tbf qdisc on its namespace's veth pair.
    [tc]=iproute2
    [python3]=python3
    [openssl]=openssl
    [promtool]=prometheus
    [systemd-analyze]=systemd
    # Debian's own browser build for the browser-login test (e2e_browser.rs),
    # run headless; nothing is downloaded by npm or playwright.
    [chromium]=chromium
)

# file -> Debian package, for what is not a command: nginx's stream module
# (TCP/UDP proxying), loaded by the deploy/lb-nginx.conf check, and a font.
declare -A NEEDED_FILES=(
    [/usr/lib/nginx/modules/ngx_stream_module.so]=libnginx-mod-stream
    # The font loadtest --plot draws its text with (read at run time, no fontconfig).
    [/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf]=fonts-dejavu-core
)

# Python modules from PyPI (not packaged by Debian): python-hcl2 parses the
# Nomad job files in deploy/ (gateway/tests/deploy_files.rs).
install_python_modules() {
    if python3 -c 'import hcl2' >/dev/null 2>&1; then
        return 0
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "install-test-deps: missing python3 -m pip and hcl2 (run as root)" >&2
            exit 1
        fi
        echo "install-test-deps: installing python3-pip"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends python3-pip
    fi
    echo "install-test-deps: installing python-hcl2"
    # A Debian-managed python3 refuses plain pip installs (PEP 668); pyenv's does not.
    python3 -m pip install --quiet python-hcl2 ||
        python3 -m pip install --quiet --break-system-packages python-hcl2
}

missing=()
for cmd in "${!NEEDED[@]}"; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("${NEEDED[$cmd]}")
    fi
done
for file in "${!NEEDED_FILES[@]}"; do
    if [ ! -e "$file" ]; then
        missing+=("${NEEDED_FILES[$file]}")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    install_python_modules
    echo "install-test-deps: all test dependencies present"
    exit 0
fi

# De-duplicate (several commands come from the same package).
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing packages: ${packages[*]} (run as root)" >&2
    exit 1
fi

# Package post-install scripts would otherwise start system-wide sshd and
# nginx on ports 22/80; the tests start their own instances instead. Docker
# images usually ship this policy file already; add it only for this run.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

echo "install-test-deps: installing ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
install_python_modules
