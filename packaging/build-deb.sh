#!/usr/bin/env bash
# Build the Debian package on Debian 12 (as root, or with the build
# dependencies installed): dist/memonlined_VERSION_all.deb.
# MEMONLINED_DEB_VERSION=V builds the same tree as version V (the tests'
# upgrade).
# The same package installs on Debian 11, 12 and 13. Debian's tools run with
# the system's Python: this PATH leaves out any other python3 found first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
deps=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools fakeroot)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { echo "build-deb.sh: missing ${missing[*]} (run as root to install them)" >&2; exit 1; }
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Build from a clean copy of the tracked files, so that a checkout's .venv,
# caches and earlier build trees never end up in the package.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -C "$work" -xf -
mkdir -p "$work/src"
(cd "$work" && find . -mindepth 1 -maxdepth 1 ! -name src -exec mv {} src/ \;)
if [ -n "${MEMONLINED_DEB_VERSION:-}" ]; then
    { printf 'memonlined (%s) unstable; urgency=medium\n\n  * Rebuilt as %s.\n\n -- memonlined developers <memonlined@localhost>  %s\n\n' \
          "$MEMONLINED_DEB_VERSION" "$MEMONLINED_DEB_VERSION" "$(date -R)"
      cat "$work/src/debian/changelog"; } >"$work/changelog" && mv "$work/changelog" "$work/src/debian/changelog"
fi
(cd "$work/src" && dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) ||
    { tail -40 "$work/build.log" >&2; echo "build-deb.sh: dpkg-buildpackage failed" >&2; exit 1; }
mkdir -p dist
for deb in "$work"/*.deb; do
    cp "$deb" dist/
    echo "dist/${deb##*/}"
done
