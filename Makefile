# qcloop — `make help` lists the targets. The README's quickstart is `make setup` then `make demo`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DATA ?=
EPOCHS ?= 5
ROUNDS ?= 1
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup setup-edge setup-label-studio demo test test-unit test-faults test-prerequisites lint typecheck compile schemas check-edge check-edge-py310 bench-edge bench-int8 bench-labelling bench-recipes bench-recipes-cv bench-fusion bench-snapshots bench-misses bench-label-agreement bench-train-threads bench-soak bench-fleet clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

setup: $(PY) ## create .venv and install everything (platform + tests), ~5 min
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "the platform needs Python 3.11+ (constraints.txt pins for it); an edge box needs only 3.10: make setup-edge")'
	@# torch first: ultralytics needs torchvision, and this pair is the tested one (constraints.txt)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[platform,test]'
	@$(PY) -c "import qcloop, ultralytics, mlflow, kfp, onnxruntime; print('setup ok:', qcloop.__version__)"

setup-label-studio: ## install the Label Studio server into its own venv (.qcloop/ls-venv), ~1 GB
	bash scripts/install-label-studio.sh

setup-edge: $(PY) ## install only what an edge box needs (no torch/ultralytics/mlflow/kfp)
	$(PIP) install -q -c constraints.txt -e '.[edge]'

demo: ## run the whole loop on one machine (DATA=<yolo folder> for real data, ROUNDS=2 to turn it twice)
	$(VENV)/bin/qcloop demo --epochs $(EPOCHS) --rounds $(ROUNDS) $(if $(DATA),--data $(DATA),)

test: test-prerequisites ## run the whole test suite (unit + integration against real services)
	$(PY) -m pytest $(PYTEST_ARGS)

test-faults: test-prerequisites ## the edge fault tests: kill/restart broker, store and agent
	$(PY) -m pytest -m faults tests/edge_agent $(PYTEST_ARGS)

test-prerequisites: ## install what the tests need beyond .venv when missing: Label Studio venv, helm, system tools
	@bash scripts/test-prerequisites.sh

test-unit: ## run only the tests that need no service
	$(PY) -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

lint: typecheck ## ruff check + ruff format --check (scope: pyproject.toml) and mypy: what CI and pre-commit run
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

typecheck: ## mypy, strict on the core and the edge agent (settings in pyproject.toml)
	$(VENV)/bin/mypy

compile: ## compile the Kubeflow pipelines to IR YAML (pipelines/compiled/)
	$(VENV)/bin/qcloop pipeline compile --out pipelines/compiled

schemas: ## write the JSON Schemas of the contracts (docs/schemas/)
	$(VENV)/bin/qcloop schemas --out docs/schemas

check-edge: ## install only the edge extra in a fresh venv and run qcloop-edge infer (after make demo)
	bash scripts/check-edge-install.sh

check-edge-py310: ## an edge box on Python 3.10: vermin, the wheels for 3.10/3.12/3.13 (x86_64, aarch64), the agent on the 3.10 libraries
	bash scripts/check-edge-py310.sh

BENCH_MODEL := .qcloop/bench/yolov8n-480.onnx
BENCH_DYNAMIC := .qcloop/bench/yolov8n-480-dynamic.onnx
BENCH_INT8 := .qcloop/bench/yolov8n-480-int8.onnx

$(BENCH_MODEL):  # trains ~13 min on 2 cores; writes the .pt and both exports
	$(PY) -m benchmarks.make_bench_model --imgsz 480 --epochs 12 --out $@

$(BENCH_DYNAMIC): $(BENCH_MODEL)
	test -f $@ || $(PY) -m benchmarks.make_bench_model --from-weights $(BENCH_MODEL:.onnx=.pt) --out $(BENCH_MODEL)

$(BENCH_INT8): $(BENCH_MODEL)  # bench-int8 writes it beside the FP32 model
	test -f $@ || $(PY) -m benchmarks.bench_int8 --model $(BENCH_MODEL)

bench-edge: $(BENCH_MODEL) $(BENCH_DYNAMIC) $(BENCH_INT8) ## edge agent vs bare session.run vs ultralytics at 480 (FP32, INT8), RSS, swap time, per-step profile
	$(PY) -m benchmarks.bench_edge --model $(BENCH_MODEL) --frames 150 --rounds 3
	$(PY) -m benchmarks.bench_edge --model $(BENCH_DYNAMIC) --frames 150 --rounds 3 \
		--paths session@w1t1,session@w1t2,session@w2t1,agent@w2t1,ultralytics@w1t2,ultralytics-rect@w1t2,release@w2t1
	$(PY) -m benchmarks.bench_edge --model $(BENCH_MODEL) --frames 150 --rounds 3 --width 1920 \
		--paths session@w1t1,session@w1t2,session@w2t1,agent@w1t1,agent@w2t1,agent@w1t2,ultralytics@w1t2
	$(PY) -m benchmarks.bench_edge --model $(BENCH_INT8) --frames 150 --rounds 3 \
		--paths session@w1t1,session@w1t2,session@w2t1,agent@w1t1,agent@w2t1,ultralytics@w1t2
	$(PY) -m benchmarks.bench_edge_profile --model $(BENCH_MODEL) --frames 100
	$(PY) -m benchmarks.bench_edge_profile --model $(BENCH_MODEL) --frames 100 --width 1920

bench-int8: $(BENCH_MODEL) ## INT8 (stem, head float) vs FP32 of the bench model: speed and mAP, one run
	$(PY) -m benchmarks.bench_int8 --model $(BENCH_MODEL)

DEVICE ?= cpu
GPU_SEEDS := 0,1,2
bench-recipes: ## training recipes vs the reference on one test split (GPU: make bench-recipes DEVICE=0)
	$(PY) -m benchmarks.bench_recipes --variants reference,scratch --epochs 150 \
		--device $(DEVICE) --jobs $(if $(filter cpu,$(DEVICE)),1,6) --seeds $(if $(filter cpu,$(DEVICE)),0,$(GPU_SEEDS))

FOLD_IDS ?= 0,1,2,3,4,5
bench-recipes-cv: ## the recipes and their ensemble vs the reference, cross-validated over 6 capture folds (GPU: DEVICE=0 FOLD_IDS=0,1,2)
	$(PY) -m benchmarks.bench_recipes --variants reference,scratch --ensemble reference,scratch --epochs 150 --folds 6 \
		--fold-ids $(FOLD_IDS) --seeds 0 --device $(DEVICE) --jobs $(if $(filter cpu,$(DEVICE)),1,6) \
		--out .qcloop/bench/recipes-cv-folds$(FOLD_IDS)

RUNS ?= .qcloop/bench/recipes-cv-folds0,1,2,3,4,5
ENSEMBLE ?= reference,scratch
bench-fusion: ## an ensemble's members fused by NMS (as registered), WBF, mirrored runs, on bench-recipes-cv's runs (RUNS=DIR ENSEMBLE=a,b)
	$(PY) -m benchmarks.bench_fusion --runs $(RUNS) --ensemble $(ENSEMBLE) --folds 6

VARIANT ?= reference
bench-snapshots: ## one run's checkpoints pooled, its boxes rescaled on val; runs of bench_recipes --save-period (RUNS=DIR VARIANT=v FOLD_IDS=4)
	$(PY) -m benchmarks.bench_snapshots --runs $(RUNS) --variant $(VARIANT) --folds 6 --fold-ids $(FOLD_IDS) \
		--pools best,last,best+last,epoch90+epoch110+epoch130+last --box-scale

bench-misses: ## where runs' mAP50-95 goes: AP by IoU, misses by kind; runs of bench_recipes (RUNS=DIR VARIANT=v FOLD_IDS=4)
	$(PY) -m benchmarks.bench_misses --runs $(RUNS) --variant $(VARIANT) --folds 6 --fold-ids $(FOLD_IDS)

bench-label-agreement: ## how well the metal tags' labels agree on photos of the same tag, by block of captures (no model)
	$(PY) -m benchmarks.bench_label_agreement

bench-train-threads: ## CPU training: qcloop's threads (every core) vs ultralytics' own (one fewer), s/epoch
	$(PY) -m benchmarks.bench_train_threads --epochs 3 --rounds 2

bench-soak: ## the edge agent for an hour of paced frames, store and broker down on a schedule: RSS, disk, lost, duplicates, log lines
	$(PY) -m benchmarks.bench_soak --duration 3600 --fps 2

bench-fleet: ## 100, 300, 1,000 simulated devices take a release: time to all serving, broker and store load
	$(PY) -m benchmarks.bench_fleet --devices 100 300 1000

bench-labelling: ## Label Studio sync-in / export+version of 1,000 tasks (after setup-label-studio)
	$(PY) -m benchmarks.bench_labelling

.PHONY: bench-loop
bench-loop: ## the edge agent's feedback picks vs as many random photos, retrained, on held-out captures (GPU: DEVICE=0)
	$(PY) -m benchmarks.bench_loop --device $(DEVICE) \
		$(if $(filter cpu,$(DEVICE)),,--epochs 150 --imgsz 480 --batch 16 --policies policy,random,uncertainty,novelty)

clean: ## remove local state of the embedded default (.qcloop/, outputs)
	rm -rf .qcloop local_outputs demo-summary.json demo-report.md demo-report.html
