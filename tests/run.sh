#!/usr/bin/env bash
# Sets up everything the test suite needs from the project's own files and
# runs it: a virtualenv in .venv with memonlined, its daemon dependencies
# (systemd-python builds against libsystemd's headers) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! pkg-config --exists libsystemd 2>/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsystemd-dev pkg-config gcc >/dev/null
fi
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[daemon,test]'
exec .venv/bin/python -m pytest "$@"
