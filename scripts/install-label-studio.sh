#!/usr/bin/env bash
# Install Label Studio into its own virtual environment (never into the project venv:
# label-studio pins Django, urllib3, pydantic, ... that clash with the platform stack).
#
# Idempotent: a venv whose label-studio already reports the wanted version is kept.
# Takes ~4 min and ~1 GB of disk on a cold pip cache.
#
# Usage: scripts/install-label-studio.sh [VENV_DIR]     (default: <repo>/.qcloop/ls-venv)
# Env:   PYTHON               interpreter to create the venv with (default: python3)
#        LABEL_STUDIO_VERSION version to install (default: 1.23.2)
# Prints the path of the label-studio binary on stdout; progress goes to stderr.
# Tests find it at .qcloop/ls-venv/bin/label-studio or via QCLOOP_LABEL_STUDIO_BIN.
set -euo pipefail

VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.qcloop/ls-venv}"
VENV="${VENV%/}"
BIN="$VENV/bin/label-studio"
PY="$VENV/bin/python"

installed_version() {
  # importlib.metadata: fast, does not start Django.
  "$PY" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null || true
}

if [[ -x "$BIN" && -x "$PY" && "$(installed_version)" == "$VERSION" ]]; then
  echo "$BIN"
  exit 0
fi

if [[ ! -x "$PY" ]]; then
  echo "install-label-studio: creating venv $VENV" >&2
  "${PYTHON:-python3}" -m venv "$VENV" >&2
fi
echo "install-label-studio: pip install label-studio==$VERSION into $VENV (~4 min, ~1 GB)" >&2
"$PY" -m pip install --quiet --upgrade pip >&2
"$PY" -m pip install --quiet "label-studio==$VERSION" >&2

got="$(installed_version)"
if [[ "$got" != "$VERSION" || ! -x "$BIN" ]]; then
  echo "install-label-studio: expected label-studio $VERSION at $BIN, found '${got:-nothing}'" >&2
  exit 1
fi
echo "install-label-studio: label-studio $got ready" >&2
echo "$BIN"
