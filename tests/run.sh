#!/usr/bin/env bash
# Sets up everything the test suite needs from the project's own files and
# runs it: a virtualenv in .venv with memonlined and its test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest "$@"
