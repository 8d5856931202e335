#!/usr/bin/env bash
# Sets up everything the test suite needs from the project's own files and
# runs it: a virtualenv in .venv with memonlined, its daemon dependency
# (pyudev) and pytest; QEMU, virtme-ng and guest kernels for tests/e2e
# (tests/e2e/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[daemon,test]'
# The real-guest tests (tests/e2e, marker vm) need QEMU, virtme-ng and Debian
# kernels: setup.sh provides them (idempotent; needs root). If it fails, the
# unit tests still run and every vm test fails with its message: never a
# silent skip.
if [ "$(id -u)" = 0 ]; then
    if ! bash tests/e2e/setup.sh; then
        echo "*** tests/e2e/setup.sh failed: the vm tests will fail ***" >&2
        export MEMONLINED_E2E_SETUP_FAILED="exit status of tests/e2e/setup.sh was not 0"
    fi
else
    echo "tests/run.sh: not root: tests/e2e/setup.sh not run (the vm tests skip, or fail when CI=true)" >&2
fi
exec .venv/bin/python -m pytest "$@"
