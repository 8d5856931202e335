#!/bin/bash
# Prepare this machine for the real-guest tests (idempotent, run as root):
# QEMU + virtme-ng, ndctl and daxctl (the dax/kmem scenario), and Debian
# guest kernels (5.10, 6.1, 6.12, and trixie-backports' newest: 7.3 when
# written) whose modules are installed on the host, because virtme-ng
# shares the host's root.
# Writes $CACHE/kernels.json: {"bookworm": {"version": ..., "vmlinuz": ...}, ...}
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=/var/cache/memonlined-e2e
. "$(dirname "$0")/debian-archive.sh"
. "$(dirname "$0")/kernel-debs.sh"
MIRROR=$DEBIAN_ARCHIVE
SUITES=(bullseye bookworm trixie trixie-backports)

die() { printf '\n*** e2e setup FAILED: %s ***\n\n' "$*" >&2; exit 1; }
trap 'die "command failed at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" = 0 ] || die "must run as root"
mkdir -p "$CACHE"

need=()
for pkg in qemu-system-x86 kmod udev busybox-static ndctl daxctl bc; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q || die "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" || die "apt-get install ${need[*]}"
fi

cd "$REPO"
[ -x .venv/bin/python ] || python3 -m venv .venv || die "python3 -m venv"
[ -x .venv/bin/vng ] || .venv/bin/pip install -q virtme-ng || die "pip install virtme-ng"

# A private apt state per suite, outside /var/lib/apt/lists (apt deletes
# unknown files there), so the host's own sources stay untouched.
apt_for() {
    local suite=$1 d=$CACHE/apt/$1
    mkdir -p "$d/lists/partial" "$d/archives/partial"
    echo "deb [trusted=yes] $MIRROR $suite main" >"$d/sources.list"
    APTOPTS=(-o "Dir::Etc::SourceList=$d/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$d/lists" -o "Dir::Cache::Archives=$d/archives"
             -o APT::Sandbox::User=root -o "Dir::Cache::pkgcache=$d/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$d/srcpkgcache.bin")
}

json=""
for suite in "${SUITES[@]}"; do
    apt_for "$suite"
    d=$CACHE/apt/$suite
    # Refresh the index only once: the kernel already fetched is what the tests use.
    if ! ls "$d"/linux-image-*.deb >/dev/null 2>&1; then
        apt-get "${APTOPTS[@]}" update -q || die "apt-get update for $suite"
        pkg=$(apt-cache "${APTOPTS[@]}" depends linux-image-amd64 |
              sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -1)
        [ -n "$pkg" ] || die "no kernel package found for $suite"
        pkgs=$(apt-cache "${APTOPTS[@]}" depends "$pkg" | kernel_packages)
        (cd "$d" && apt-get "${APTOPTS[@]}" download $pkgs) || die "apt-get download $pkgs ($suite)"
    fi
    read -r version vmlinuz src < <(kernel_from_debs "$d" "$d/extract") || die "no kernel in $d"
    if [ ! -f "/lib/modules/$version/modules.dep" ]; then
        mkdir -p "/lib/modules/$version"
        cp -a "$src/." "/lib/modules/$version/"
        depmod "$version" || die "depmod $version"
    fi
    # vng takes modules from the root that holds the kernel image; in /boot that
    # is the host root, whose /lib/modules the guest sees (the guest hides
    # parts of /var, so the extracted tree itself is not usable).
    # Only when it differs: a guest may be starting from it right now.
    cmp -s "$vmlinuz" "/boot/vmlinuz-$version" || install -D -m 0644 "$vmlinuz" "/boot/vmlinuz-$version"
    vmlinuz=/boot/vmlinuz-$version
    echo "e2e: $suite kernel $version: $vmlinuz"
    json+="${json:+,}\"$suite\": {\"version\": \"$version\", \"vmlinuz\": \"$vmlinuz\"}"
done
echo "{$json}" >"$CACHE/kernels.json"

# The kernel's own memory-hotplug selftest, from Debian's linux-source package
# (bookworm's, through the host's apt), for test_lifecycle.py.
selftest=$CACHE/selftest/mem-on-off-test.sh
if [ ! -f "$selftest" ]; then
    rm -rf "$CACHE/selftest" && mkdir -p "$CACHE/selftest" && cd "$CACHE/selftest"
    source_pkg() { apt-cache depends linux-source 2>/dev/null | sed -n 's/^ *Depends: \(linux-source-[0-9][^ ]*\)$/\1/p' | head -1; }
    pkg=$(source_pkg || true)
    [ -n "$pkg" ] || { apt-get update -q || die "apt-get update"; pkg=$(source_pkg || true); }
    [ -n "$pkg" ] || die "no linux-source package found"
    apt-get download -q "$pkg" || die "apt-get download $pkg"
    dpkg-deb --fsys-tarfile "$pkg"_*.deb | tar -x --wildcards './usr/src/linux-source-*.tar.xz'
    tar -xJf usr/src/linux-source-*.tar.xz --wildcards '*/tools/testing/selftests/memory-hotplug/mem-on-off-test.sh'
    mv linux-source-*/tools/testing/selftests/memory-hotplug/mem-on-off-test.sh "$selftest.tmp"
    rm -rf usr linux-source-* "$pkg"_*.deb
    mv "$selftest.tmp" "$selftest"
    cd "$REPO"
fi
echo "e2e: the kernel's memory-hotplug selftest: $selftest"
echo "e2e: wrote $CACHE/kernels.json"
