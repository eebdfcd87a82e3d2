#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The extension zip (with the unmodified pyzmq wheels from PyPI) is built first, so the manifest and
# packaging tests check the real build.
.venv/bin/python scripts/build_extension.py > /dev/null
exec .venv/bin/python -m pytest "$@"
