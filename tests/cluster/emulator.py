"""What a cluster would give a pipeline step's pod, from the rendered chart and the compiled IR.

No Kubernetes cluster or KFP backend runs here. This module reads what decides a step's
process on one: the objects ``helm template`` renders (ConfigMap, Secrets, Services,
the MLflow Deployment), the compiled pipeline's Kubernetes platform spec (which keys of
which ConfigMap and Secret become which variables) and the platform image's ``ENV``
lines. From them it builds the exact environment a pod of a run namespace gets:

- the image's ``ENV`` (its venv on ``PATH``, ``QCLOOP_CODE_VERSION``, the ultralytics
  offline settings);
- ``configMapAsEnv`` / ``secretAsEnv`` resolved against the objects rendered into the
  run's namespace, failing like the kubelet (CreateContainerConfigError) for a missing
  object or key: KFP before 2.15 cannot mark them optional;
- the service-link variables Kubernetes adds for every Service of the pod's namespace
  (``<NAME>_SERVICE_HOST``, ``<NAME>_PORT_<port>_TCP_ADDR``, ...; KFP's run pods keep
  ``enableServiceLinks``), and the ``KUBERNETES_*`` ones every pod gets;

and nothing of the process that builds it. ``inside.py`` runs the steps with it.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "platform.Dockerfile"


class PodRefused(AssertionError):
    """The kubelet would not start the pod (an object or key the spec names is missing)."""


def objects_of(manifest: str) -> list[dict[str, Any]]:
    """The objects of a rendered manifest."""
    return [doc for doc in yaml.safe_load_all(manifest) if doc]


def find(objects: list[dict[str, Any]], kind: str, namespace: str, name: str) -> dict[str, Any]:
    """The object, or ``PodRefused`` naming what is missing."""
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == kind and meta["name"] == name and meta.get("namespace") == namespace:
            return obj
    raise PodRefused(f'{kind.lower()} "{name}" not found in namespace {namespace}')


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's values, decoded (``data`` is base64, ``stringData`` plain)."""
    found = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**found, **(secret.get("stringData") or {})}


def container_env(
    objects: list[dict[str, Any]], namespace: str, container: dict[str, Any]
) -> dict[str, str]:
    """A container's `env`, `valueFrom.secretKeyRef` resolved against the rendered Secrets."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            secret = find(objects, "Secret", namespace, ref["name"])
            env[item["name"]] = secret_data(secret)[ref["key"]]
    return env


def image_env(dockerfile: Path = DOCKERFILE, **build_args: str) -> dict[str, str]:
    """The ``ENV`` of the image's last stage, ``${ARG}`` filled from ``build_args``."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages = re.split(r"^FROM .*$", text, flags=re.MULTILINE)
    env: dict[str, str] = {}
    for line in stages[-1].splitlines():
        if not line.startswith("ENV "):
            continue
        for name, value in re.findall(r"(\w+)=(\S+)", line[4:]):
            value = re.sub(
                r"\$\{(\w+)\}", lambda m: build_args.get(m.group(1), env.get(m.group(1), "")), value
            )
            env[name] = value
    return env


def service_links(objects: list[dict[str, Any]], namespace: str) -> dict[str, str]:
    """The variables Kubernetes puts into a pod for each Service of its namespace."""
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
    }
    for n, svc in enumerate(o for o in objects if o["kind"] == "Service"):
        if svc["metadata"].get("namespace") != namespace:
            continue
        name = svc["metadata"]["name"].upper().replace("-", "_")
        ip = f"10.96.1.{n + 10}"
        ports = svc["spec"]["ports"]
        env[f"{name}_SERVICE_HOST"] = ip
        env[f"{name}_SERVICE_PORT"] = str(ports[0]["port"])
        env[f"{name}_PORT"] = f"tcp://{ip}:{ports[0]['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                    port["port"]
                )
            prefix = f"{name}_PORT_{port['port']}_{proto}"
            env[prefix] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{prefix}_PROTO"] = proto.lower()
            env[f"{prefix}_PORT"] = str(port["port"])
            env[f"{prefix}_ADDR"] = ip
    return env


def platform_env(
    objects: list[dict[str, Any]], namespace: str, executor: dict[str, Any]
) -> dict[str, str]:
    """``configMapAsEnv`` and ``secretAsEnv`` of one executor, resolved in ``namespace``."""
    env: dict[str, str] = {}
    for entry in executor.get("configMapAsEnv", []):
        data = find(objects, "ConfigMap", namespace, entry["configMapName"]).get("data") or {}
        for pair in entry["keyToEnv"]:
            if pair["configMapKey"] not in data:
                raise PodRefused(
                    f"couldn't find key {pair['configMapKey']} in ConfigMap "
                    f"{namespace}/{entry['configMapName']}"
                )
            env[pair["envVar"]] = str(data[pair["configMapKey"]])
    for entry in executor.get("secretAsEnv", []):
        data = secret_data(find(objects, "Secret", namespace, entry["secretName"]))
        for pair in entry["keyToEnv"]:
            if pair["secretKey"] not in data:
                raise PodRefused(
                    f"couldn't find key {pair['secretKey']} in Secret "
                    f"{namespace}/{entry['secretName']}"
                )
            env[pair["envVar"]] = data[pair["secretKey"]]
    return env


def executors(ir_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pipeline spec executors, Kubernetes platform executors) of a compiled pipeline."""
    spec, platform = yaml.safe_load_all(ir_path.read_text())
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return spec["deploymentSpec"]["executors"], kubernetes


def function_of(executor: dict[str, Any]) -> str:
    """The Python function a lightweight component's container runs."""
    args = executor["container"]["args"]
    return str(args[args.index("--function_to_execute") + 1])


def service_hosts(objects: list[dict[str, Any]]) -> list[str]:
    """Every in-cluster DNS name of the rendered Services (`<svc>.<ns>.svc`, ...)."""
    names = []
    for svc in (o for o in objects if o["kind"] == "Service"):
        name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
        names += [f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local", f"{name}.{ns}"]
    return names
