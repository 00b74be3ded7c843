#!/usr/bin/env bash
# benchmarks.bench_recipes (or the pipeline's train step) on a GPU box without network.
#
#   bash benchmarks/gpu-bench-recipes.sh prepare   # on a networked machine, once: .whl/ and
#                                                  # .devdata/ (git-ignored); copy the checkout
#                                                  # with them to the GPU box
#   # then on the GPU box (Python 3.12 with torch and CUDA, no ultralytics needed):
#   VARIANTS=reference,scratch FOLDS=6 FOLD_IDS=0,1,2 RETURN=scratch LIMIT=540 \
#     bash benchmarks/gpu-bench-recipes.sh run
#
# `prepare` downloads ultralytics and what it needs beyond torch as py3.12 wheels (36 MB),
# and pulls dataset version v1 into .devdata/dataset. `run` installs the wheels into
# /tmp/site, trains with benchmarks.bench_recipes under `timeout $LIMIT`, and leaves in
# $OUT (default .qcloop/bench/gpu-out): results.json, the gzipped log, and a tar (split in 15 MB parts)
# of the result.json and chosen weights (half-precision .pt, ~6 MB for a YOLOv8n) of the
# runs of the variants in RETURN (comma-separated; default none). Back on the workstation,
# unpack it under an --out folder beside earlier runs and score more, e.g. an ensemble,
# without training: python -m benchmarks.bench_recipes ... --reuse --ensemble A,B
# (--reuse exports each ONNX).
# env for run: VARIANTS EPOCHS(150) JOBS(6) SEEDS(0) FOLDS(0) FOLD_IDS LIMIT(500) RETURN OUT
# SAVE_PERIOD(-1; N keeps every Nth epoch's weights, for benchmarks.bench_snapshots). A
# variant may carry extra ultralytics arguments, train on labels drawn one way per tag, or
# on train photos with real scratch marks pasted in (+KEY=VALUE, +consensus, +pasteK):
# VARIANTS=reference,reference+consensus,reference+paste; the `paste` recipe pastes the
# marks anew each time a photo loads (benchmarks/paste.py).
# MISSES=1 also runs benchmarks.bench_misses on each variant's runs (all at once, on the
# CPU, ~10 s a run) and leaves misses-VARIANT.json in $OUT (no weights needed back).
#
# `step` runs the pipeline's train step itself (components.train.train_step, what the KFP
# `train` component calls; no kfp, MLflow or DVC needed) on v1, e.g. a three-member
# ensemble, its members at once as the step trains them on a GPU, and leaves in $OUT the
# step's metadata with its wall time (step.json), the gzipped log and a tar of the
# member weights (member-K.pt); back on the workstation, pool and score them on v1's test
# split:
#   RECIPE=reference,scratch,reference LIMIT=540 bash benchmarks/gpu-bench-recipes.sh step
#   cat step/model.tar.part-* | tar -xf - -C step     # step/model/member-K.pt
#   .venv/bin/python -c 'from pathlib import Path; from components.ensemble import *;
#     from components.evaluate import evaluate_onnx as e; e(export_ensemble(member_weights(
#     Path("step/model")), Path("step/ensemble.onnx"), imgsz=480), Path(".devdata/dataset"), imgsz=480)'
# env for step: RECIPE(reference,scratch,reference) EPOCHS(150) SEED(0) IMGSZ(480) LIMIT(500)
# PYTHON(python3; .venv/bin/python to try it here with EPOCHS=1 DEVICE=cpu) DEVICE(0) OUT
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.qcloop/bench/gpu-out}
mkdir -p "$OUT"

prepare() {
  local py=.venv/bin/python
  mkdir -p .whl
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    ultralytics==8.4.190 ultralytics-thop==2.2.3 ultralytics-platform==0.1.99 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    onnxslim==0.1.98 polars==1.20.0
  if [ ! -f .devdata/dataset/manifest.json ]; then
    local ws
    ws=$(mktemp -d /tmp/qcloop-gpu-prep-XXXX)
    (cd "$ws" && "$OLDPWD/.venv/bin/qcloop" dataset import "$OLDPWD/../shared/datasets/metal-tags" \
      && "$OLDPWD/.venv/bin/qcloop" dataset pull v1 --out "$OLDPWD/.devdata/dataset")
    rm -rf "$ws"
  fi
  du -sh .whl .devdata
}

install() {
  local t0
  t0=$(date +%s)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
  echo "install $(($(date +%s) - t0)) s"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -c "import torch, ultralytics; print('torch', torch.__version__, 'ultralytics', ultralytics.__version__, torch.cuda.is_available())"
}

step() {
  local t0 py=${PYTHON:-python3} out=/tmp/step
  t0=$(date +%s)
  if [ "$py" = python3 ]; then install; fi
  rm -rf "$out" && mkdir -p "$out"
  set +e
  RECIPE=${RECIPE:-reference,scratch,reference} timeout "${LIMIT:-500}" "$py" - "$out" <<'PY' 2>&1 |
import json, os, sys, time
from pathlib import Path
from components.train import train_step
from qcloop.logs import configure_logging
configure_logging()
out = Path(sys.argv[1])
started = time.time()
metadata = train_step(
    Path(".devdata/dataset"), out / "model", recipe=os.environ["RECIPE"],
    seed=int(os.environ.get("SEED", "0")), epochs=int(os.environ.get("EPOCHS", "150")),
    imgsz=int(os.environ.get("IMGSZ", "480")), batch=16, patience=50,
    device=os.environ.get("DEVICE", "0"),
)
metadata["step_s"] = round(time.time() - started, 1)
(out / "step.json").write_text(json.dumps(metadata, indent=2))
print("step", json.dumps(metadata))
PY
    tee /tmp/step.log | grep -v "^ *[0-9]*/[0-9]* " | grep -v "\] epoch [0-9]*/" | tail -n 40
  echo "step rc ${PIPESTATUS[0]} after $(($(date +%s) - t0)) s"
  set -e
  gzip -c /tmp/step.log >"$OUT/step.log.gz"
  cp "$out/step.json" "$OUT/" 2>/dev/null || true
  if [ -d "$out/model" ]; then
    tar -C "$out" -cf /tmp/model.tar model
    split -b 15M /tmp/model.tar "$OUT/model.tar.part-"
  fi
  ls -la "$OUT"
}

run() {
  local t0 out=/tmp/recipes folds=()
  t0=$(date +%s)
  install
  if [ "${FOLDS:-0}" != 0 ]; then folds=(--folds "$FOLDS" --fold-ids "$FOLD_IDS"); fi
  set +e
  timeout "${LIMIT:-500}" python3 -m benchmarks.bench_recipes --data .devdata/dataset \
    --variants "${VARIANTS:-reference,scratch+avg10}" --epochs "${EPOCHS:-150}" --device 0 \
    --jobs "${JOBS:-6}" --seeds "${SEEDS:-0}" "${folds[@]}" --save-period "${SAVE_PERIOD:--1}" \
    --out "$out" 2>&1 |
    tee /tmp/bench.log | grep -v "^ *[0-9]*/[0-9]* " | tail -n 60
  echo "bench rc ${PIPESTATUS[0]} after $(($(date +%s) - t0)) s"
  set -e
  if [ "${MISSES:-0}" = 1 ]; then
    for variant in $(tr , " " <<<"${VARIANTS:-reference,scratch+avg10}"); do
      python3 -m benchmarks.bench_misses --runs "$out" --variant "$variant" \
        --data .devdata/dataset --seeds "${SEEDS:-0}" "${folds[@]}" >"/tmp/misses-$variant.log" 2>&1 &
    done
    wait
    tail -n 8 /tmp/misses-*.log
    cp "$out"/misses-*.json "$OUT/" 2>/dev/null || true
  fi
  gzip -c /tmp/bench.log >"$OUT/bench.log.gz"
  cp "$out/results.json" "$OUT/results.json" 2>/dev/null || true
  local keep=() weights
  for variant in $(tr , " " <<<"${RETURN:-}"); do
    for dir in "$out/$variant"-seed*; do
      [ -f "$dir/result.json" ] || continue
      weights=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["weights"])' \
        "$dir/result.json")
      keep+=("${dir#"$out"/}/result.json" "${dir#"$out"/}/run/weights/$weights")
    done
  done
  if [ "${#keep[@]}" -gt 0 ]; then
    tar -C "$out" -cf /tmp/runs.tar "${keep[@]}"
    split -b 15M /tmp/runs.tar "$OUT/runs.tar.part-"
  fi
  ls -la "$OUT"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  step) step ;;
  *) echo "usage: bash benchmarks/gpu-bench-recipes.sh prepare|run|step (see its header)" >&2; exit 2 ;;
esac
