#!/usr/bin/env bash
# The edge box on Python 3.10 (Ubuntu 22.04, NVIDIA JetPack 6), checked without a 3.10
# interpreter (none can be installed here):
#   1. the code an edge box runs (qcloop, edge_agent) uses nothing newer than 3.10 (vermin);
#   2. `pip install -c constraints.txt '.[edge,camera]'` resolves to wheels for CPython 3.10
#      on x86_64 and aarch64 (pip download for that target, constraints' markers read as
#      3.10 reads them), and for 3.12 and 3.13 too (Ubuntu 24.04, Debian 13);
#   3. the agent runs on the libraries a 3.10 box gets (numpy, onnxruntime, pillow at their
#      3.10 pins, tomli) with the 3.10 standard library's gap (no tomllib) imposed: every
#      edge_agent module imports, the example config validates, and `qcloop-edge infer`
#      finds the same boxes as the tested stack (.venv) on real images.
# usage: [CONF=0.05] scripts/check-edge-py310.sh [MODEL.onnx]   (default: the model `make demo` released)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(ls .qcloop/demo/store/models/*/*/model.onnx 2>/dev/null | head -n 1)}
[ -n "$model" ] && [ -f "$model" ] || { echo "no model: run make demo first or pass MODEL.onnx" >&2; exit 2; }
conf=${CONF:-0.05}  # score threshold of the compared boxes
[ -x .venv/bin/qcloop-edge ] || { echo "no .venv/bin/qcloop-edge: run make setup first" >&2; exit 2; }
# the tests' real photos: four captures of the line, with scratches and without
mapfile -t images < <(ls tests/data/metal-tags/images/*.jpg)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/tools"
"$work/tools/bin/pip" install -q --upgrade pip
"$work/tools/bin/pip" install -q vermin==1.9.2 packaging

echo "== 1. the edge code against Python 3.10 (vermin)"
"$work/tools/bin/vermin" --no-tips --eval-annotations --violations -t=3.10- qcloop edge_agent

echo "== 2. the edge install resolves for CPython 3.10 (and 3.12, 3.13)"
"$work/tools/bin/pip" wheel -q --no-deps -w "$work/wheel" .
wheel=$(ls "$work"/wheel/qcloop-*.whl)
for version in 3.10 3.12 3.13; do
  # pip reads the markers as the running interpreter would: read them as $version does
  "$work/tools/bin/python" - constraints.txt "$version" >"$work/constraints-$version.txt" <<'PY'
import sys

from packaging.requirements import Requirement

env = {"python_version": sys.argv[2], "python_full_version": sys.argv[2] + ".0"}
for line in open(sys.argv[1]):
    text = line.split("#", 1)[0].strip()
    if text:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            print(f"{req.name}{req.specifier}")
PY
  extra=()
  [ "$version" != 3.10 ] || extra=(tomli)  # the wheel's own marker is read as 3.11's here
  for arch in x86_64 aarch64; do
    dest="$work/cp$version-$arch"
    "$work/tools/bin/pip" download -q --only-binary=:all: --python-version "$version" \
      --implementation cp --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
      --platform "manylinux2014_$arch" -c "$work/constraints-$version.txt" -d "$dest" \
      "$wheel[edge,camera]" "${extra[@]}"
    echo "cp$version $arch: $(ls "$dest" | grep -v '^qcloop-' | sed 's/-py.*\|-cp.*//' | sort | tr '\n' ' ')"
  done
done

echo "== 3. the agent on the 3.10 library set, without tomllib"
python3 -m venv "$work/edge"
"$work/edge/bin/pip" install -q --upgrade pip
"$work/edge/bin/pip" install -q -c "$work/constraints-3.10.txt" "$wheel[edge]" tomli
site=$("$work/edge/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat >"$site/sitecustomize.py" <<'PY'
# Python 3.10's standard library has no tomllib: refuse it, as 3.10 would.
import sys


class _NoTomllib:
    def find_spec(self, name, path=None, target=None):
        if name == "tomllib":
            raise ModuleNotFoundError("No module named 'tomllib' (Python 3.10)", name=name)
        return None


sys.meta_path.insert(0, _NoTomllib())
PY
"$work/edge/bin/python" -c 'import tomllib' 2>/dev/null \
  && { echo "tomllib is importable: the 3.10 standard library is not imposed" >&2; exit 1; }
"$work/edge/bin/python" scripts/edge_imports.py | tee "$work/imports.txt"
grep -q "TOML by tomli:" "$work/imports.txt"
# placeholders: the example config wants its secrets from the environment (never the file)
QCLOOP_EDGE_STORE__ACCESS_KEY=placeholder QCLOOP_EDGE_STORE__SECRET_KEY=placeholder \
  QCLOOP_EDGE_MQTT__PASSWORD=placeholder \
  "$work/edge/bin/qcloop-edge" check-config --config edge_agent/qcloop-edge.example.toml >/dev/null
echo "edge_agent/qcloop-edge.example.toml: valid"
"$work/edge/bin/qcloop-edge" infer --model "$model" --json --conf "$conf" "${images[@]}" >"$work/py310.jsonl"
.venv/bin/qcloop-edge infer --model "$model" --json --conf "$conf" "${images[@]}" >"$work/tested.jsonl"
.venv/bin/python - "$work/py310.jsonl" "$work/tested.jsonl" "$conf" <<'PY'
import json
import sys

import numpy as np

from qcloop.boxes import iou_one_to_many


def iou(p: list[float], q: list[float]) -> float:
    return float(iou_one_to_many(np.array(p), np.array([q]))[0])


a, b = ([json.loads(line) for line in open(path)] for path in sys.argv[1:3])
conf = float(sys.argv[3])
assert len(a) == len(b) > 0, (len(a), len(b))
same = 0
for x, y in zip(a, b, strict=True):
    assert x["image"] == y["image"]
    rest = list(y["detections"])
    for p in x["detections"]:
        q = max(rest, key=lambda q: iou(p["box"], q["box"]), default=None)
        if q is not None and iou(p["box"], q["box"]) > 0.95 and p["label"] == q["label"]:
            rest.remove(q)
            assert abs(p["score"] - q["score"]) < 0.01, (x["image"], p, q)
            same += 1
        else:  # only a box on the threshold may fall on the other side of it
            assert abs(p["score"] - conf) < 0.002, f"{x['image']}: only on the 3.10 set: {p}"
    for q in rest:
        assert abs(q["score"] - conf) < 0.002, f"{x['image']}: only on the tested stack: {q}"
assert same > 0, "no box on any image: nothing compared (a weaker model needs a lower CONF)"
print(f"qcloop-edge infer: the same {same} boxes on {len(a)} real images as the tested stack")
PY
