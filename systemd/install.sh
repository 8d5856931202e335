#!/usr/bin/env bash
# Install memonlined as a systemd service, from a checkout, as root:
#   sudo systemd/install.sh [PYTHON]
# pip-installs the package (with the daemon's dependencies) for PYTHON
# (default python3), installs the unit with ExecStart pointing at that
# installation, the configuration (kept if present) and the man pages, then
# enables and starts the service.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-python3}
if ! pkg-config --exists libsystemd 2>/dev/null && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libsystemd-dev pkg-config gcc python3-venv
fi
"$python" -m venv /opt/memonlined
/opt/memonlined/bin/pip install -q ".[daemon]"
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
