#!/bin/bash
# A Debian root (SUITE: bookworm by default, bullseye, trixie) with systemd as init,
# for the systemd-unit test (test_systemd.py), built once with debootstrap and
# cached (about 1.5 min, 820 MB). memonlined itself is copied in by the test
# on every run.
set -euo pipefail
SUITE=${1:-bookworm}
CACHE=/var/cache/memonlined-e2e
ROOT=$CACHE/systemd-root-$SUITE
. "$(dirname "$0")/debian-archive.sh"
MIRROR=$DEBIAN_ARCHIVE

die() { printf '\n*** e2e systemd image FAILED: %s ***\n\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[ -f "$ROOT/.complete" ] && exit 0
if ! command -v debootstrap >/dev/null; then
    apt-get update -q || die "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap || die "apt-get install debootstrap"
fi
rm -rf "$ROOT.tmp"
debootstrap --variant=minbase \
    --include=systemd-sysv,udev,python3,python3-pyudev,procps,kmod,linux-image-amd64,initramfs-tools \
    "$SUITE" "$ROOT.tmp" "$MIRROR" || die "debootstrap $SUITE"
# Debian's 7.x kernels have their image in /usr/lib/modules/V/vmlinuz (linux-binary-V).
# (compgen, not ls | grep: under pipefail ls fails for the layout a suite lacks.)
compgen -G "$ROOT.tmp/boot/vmlinuz-*" >/dev/null || compgen -G "$ROOT.tmp/usr/lib/modules/*/vmlinuz" >/dev/null ||
    die "no kernel in the root"
ls "$ROOT.tmp"/boot/initrd.img-* >/dev/null || die "no initrd in the root"
echo "/dev/vda / ext4 defaults 0 1" >"$ROOT.tmp/etc/fstab"
echo memonlined-e2e >"$ROOT.tmp/etc/hostname"
# No login prompt on the console the test reads.
ln -sf /dev/null "$ROOT.tmp/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$ROOT.tmp/etc/systemd/system/getty@tty1.service"
rm -rf "$ROOT.tmp/var/cache/apt/archives/"*.deb
touch "$ROOT.tmp/.complete"
rm -rf "$ROOT"
mv "$ROOT.tmp" "$ROOT"
echo "e2e: systemd root in $ROOT"
