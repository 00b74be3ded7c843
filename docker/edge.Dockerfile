# syntax=docker/dockerfile:1
# qcloop edge agent image: only the `edge` extra (onnxruntime, numpy, Pillow, paho-mqtt, minio):
# no torch, ultralytics, mlflow or kfp. For boxes that run containers instead of systemd.
# Build from the repository root:
#   docker build -f docker/edge.Dockerfile -t ghcr.io/qcloop/qcloop-edge:0.1.0 .
# Run:
#   docker run -v /etc/qcloop:/etc/qcloop:ro -v qcloop-edge:/var/lib/qcloop-edge \
#     -v /srv/qcloop/inbox:/srv/qcloop/inbox --env-file /etc/qcloop/edge.env \
#     ghcr.io/qcloop/qcloop-edge:0.1.0 run --config /etc/qcloop/edge.toml

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY constraints.txt pyproject.toml README.md LICENSE ./
# The core and the agent only: the platform's packages are not needed on a box.
COPY qcloop ./qcloop
COPY edge_agent ./edge_agent
RUN pip install -c constraints.txt ".[edge]" \
 && qcloop-edge --help >/dev/null \
 && python -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'ultralytics', 'mlflow', 'kfp') if u.find_spec(m)]; sys.exit(f'edge image holds {bad}' if bad else 0)"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 qcloop \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin qcloop \
 && mkdir -p /var/lib/qcloop-edge /srv/qcloop/inbox \
 && chown qcloop:qcloop /var/lib/qcloop-edge /srv/qcloop/inbox
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
VOLUME ["/var/lib/qcloop-edge"]
ENTRYPOINT ["qcloop-edge"]
CMD ["run", "--config", "/etc/qcloop/edge.toml"]
