# syntax=docker/dockerfile:1
# qcloop platform image: the Kubeflow pipeline components (train, export, evaluate, gate,
# register), the release bridge (`qcloop release watch`) and the CronJobs of the Helm chart.
# Build from the repository root (the tag is the commit, as CI tags it: a pipeline compiled
# from that commit names this image, pipelines/ir.py):
#   commit=$(git rev-parse --short=12 HEAD)
#   docker build -f docker/platform.Dockerfile --build-arg CODE_VERSION=$commit \
#     -t ghcr.io/qcloop/qcloop:$commit .
# The training step runs the CUDA variant, tagged <commit>-cuda: the same build with
# --build-arg TORCH_INDEX_URL=https://pypi.org/simple (PyPI's torch is the CUDA build).

# Exact tag of the Python base (bump deliberately; `docker buildx imagetools inspect` gives a
# digest to pin with PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# CPU wheels of torch/torchvision (~10x smaller than the CUDA build PyPI serves). The GPU
# training image (<commit>-cuda) is built with TORCH_INDEX_URL=https://pypi.org/simple.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt ./
# torch first, from its own index (the versions come from constraints.txt): ultralytics then
# finds it installed and PyPI's CUDA build is never fetched.
RUN pip install --index-url "${TORCH_INDEX_URL}" -c constraints.txt torch torchvision
COPY pyproject.toml README.md LICENSE ./
COPY qcloop ./qcloop
COPY components ./components
COPY edge_agent ./edge_agent
COPY pipelines ./pipelines
COPY label_studio ./label_studio
RUN pip install -c constraints.txt ".[platform]" \
 && python -c "import qcloop, components, pipelines, ultralytics, mlflow, kfp, torch" \
 && pip check

FROM ${PYTHON_IMAGE}
# The KFP v2 launcher puts input artifacts under /gcs, /minio and /s3; KFP releases before
# kubeflow/pipelines#10538 mount no emptyDir there, so a non-root step needs them writable.
# opencv (an ultralytics dependency) needs libGL and glib; DVC needs git. Debian's versions
# follow the pinned base image (pinning them here breaks on every point release).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 qcloop \
 && useradd --uid 10001 --gid 10001 --home-dir /home/qcloop --create-home --shell /usr/sbin/nologin qcloop \
 && mkdir -p /gcs /minio /s3 \
 && chown qcloop:qcloop /gcs /minio /s3
COPY --from=build /opt/venv /opt/venv
# The commit the image was built from (the image has no .git): what registered models and
# the pipeline versions uploaded from the retraining CronJob name as their code version.
ARG CODE_VERSION=unknown
# ultralytics fetches a font at first use: place matplotlib's DejaVu as the fonts it asks for
# (it reads $YOLO_CONFIG_DIR/Ultralytics).
ENV PATH=/opt/venv/bin:$PATH \
    QCLOOP_CODE_VERSION=${CODE_VERSION} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    YOLO_CONFIG_DIR=/home/qcloop/.config \
    YOLO_AUTOINSTALL=0 \
    MLFLOW_DISABLE_TELEMETRY=true
RUN mkdir -p "${YOLO_CONFIG_DIR}/Ultralytics" \
 && font="$(python -c 'import matplotlib, os; print(os.path.join(matplotlib.get_data_path(), "fonts/ttf/DejaVuSans.ttf"))')" \
 && cp "$font" "${YOLO_CONFIG_DIR}/Ultralytics/Arial.ttf" \
 && cp "$font" "${YOLO_CONFIG_DIR}/Ultralytics/Arial.Unicode.ttf" \
 && chown -R qcloop:qcloop /home/qcloop
USER 10001:10001
WORKDIR /home/qcloop
CMD ["qcloop", "--help"]
