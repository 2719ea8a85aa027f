# Sourced by main.sh and test.sh: make ./.venv (once) and install aprtool into it.
# Works on a fresh Debian machine that has only python3 and pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv separately (python3-venv); fall back to virtualenv from PyPI.
    rm -rf "$VENV"
    "$PY" -m pip install --quiet --user virtualenv 2>/dev/null \
      || "$PY" -m pip install --quiet --user --break-system-packages virtualenv
    "$PY" -m virtualenv --quiet "$VENV"
  fi
fi

# Re-install only when the project definition changed since the last install.
STAMP="$VENV/.aprtool-installed"
EXTRAS="${APRTOOL_EXTRAS:-}"
WANT="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)$EXTRAS"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  # torch is pinned to the CPU build kept on disk; an unpinned torch would pull a CUDA build.
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==2.13.0" -e "$ROOT$EXTRAS"
  echo "$WANT" > "$STAMP"
fi
