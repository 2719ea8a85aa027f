#!/usr/bin/env bash
# Lint, format check, then the whole test suite.
set -euo pipefail
APRTOOL_EXTRAS="[dev]"
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
cd "$ROOT"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/python" -m pytest -n 2 -q "$@"
