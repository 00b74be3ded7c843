#!/usr/bin/env bash
# Prove that a shop-floor box needs only the `edge` extra: install it into a fresh venv,
# check that no heavy platform package came along, and run `qcloop-edge infer` on real
# images with a model the platform produced (default: the one `make demo` released).
# usage: scripts/check-edge-install.sh [MODEL.onnx] [IMAGE...]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(ls .qcloop/demo/store/models/*/*/model.onnx 2>/dev/null | head -n 1)}
[ -n "$model" ] && [ -f "$model" ] || { echo "no model: run make demo first or pass MODEL.onnx" >&2; exit 2; }
shift || true
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(tests/data/metal-tags/images/*-left-top.jpg)  # the tests' real photos
venv=$(mktemp -d)/edge-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -c constraints.txt '.[edge]'
heavy=$("$venv/bin/pip" list --format=freeze | grep -iE '^(torch|torchvision|ultralytics|mlflow|kfp|dvc|opencv-python)==' || true)
[ -z "$heavy" ] || { echo "edge install pulled platform packages: $heavy" >&2; exit 1; }
size=$(du -sm "$venv" | cut -f1)
echo "edge venv: ${size} MB, packages: $("$venv/bin/pip" list --format=freeze | wc -l)"
"$venv/bin/qcloop-edge" infer --model "$model" --json "${images[@]:0:3}"
rm -rf "$(dirname "$venv")"
