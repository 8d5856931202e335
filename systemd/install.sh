#!/usr/bin/env bash
# Install memonlined as a systemd service from a checkout, as root, where
# the Debian package (packaging/build-deb.sh) does not fit:
#   sudo systemd/install.sh [PYTHON]
# Its one dependency, pyudev (only for event_source = udev), comes from the
# distribution where it has it (Debian and Ubuntu: python3-pyudev; Fedora
# and RHEL: the same name), from pip otherwise (pure Python); the script
# says which it does. memonlined goes into a virtualenv in /opt/memonlined
# (seeing the system's packages); the unit, with ExecStart pointing there,
# the configuration (kept if present) and the man pages are installed, then
# the service is enabled and started.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
DEPS=(python3-pyudev)

from_distribution() {
    if command -v apt-get >/dev/null && apt-cache show "${DEPS[@]}" >/dev/null 2>&1; then
        echo "install.sh: installing the distribution's ${DEPS[*]} with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${DEPS[@]}" python3-venv
    elif command -v dnf >/dev/null && dnf -q info "${DEPS[@]}" >/dev/null 2>&1; then
        echo "install.sh: installing the distribution's ${DEPS[*]} with dnf"
        dnf -y -q install "${DEPS[@]}"
    else
        return 1
    fi
}

if from_distribution; then
    "$python" -m venv --system-site-packages /opt/memonlined
    /opt/memonlined/bin/pip install -q --no-deps .
else
    echo "install.sh: the distribution has no ${DEPS[*]}: pip installs pyudev"
    "$python" -m venv /opt/memonlined
    /opt/memonlined/bin/pip install -q ".[daemon]"
fi
sed "s|^ExecStart=.*|ExecStart=/opt/memonlined/bin/memonlined run|" systemd/memonlined.service \
    > /etc/systemd/system/memonlined.service
install -d /etc/memonlined
[ -e /etc/memonlined/memonlined.conf ] || install -m 0644 etc/memonlined.conf /etc/memonlined/memonlined.conf
install -D -m 0644 man/memonlined.8 /usr/local/share/man/man8/memonlined.8
install -D -m 0644 man/memonlined.conf.5 /usr/local/share/man/man5/memonlined.conf.5
ln -sf /opt/memonlined/bin/memonlined /usr/local/bin/memonlined
systemctl daemon-reload
systemctl enable --now memonlined.service
if [ "$(cat /sys/devices/system/memory/auto_online_blocks)" != offline ]; then
    echo "note: the kernel onlines hot-plugged memory itself; memonlined takes over at start."
    echo "      To keep it from racing at boot, add memhp_default_state=offline to the kernel command line."
fi
systemctl --no-pager status memonlined.service | head -5
