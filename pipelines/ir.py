"""The compiled pipelines as a Kubeflow Pipelines backend receives them.

``compile_to`` compiles a pipeline to IR YAML and makes it what a cluster can run:

- every step names the platform image of this code, ``<pipelines.image>:<tag>`` (the
  tag: ``pipelines.image_tag``, else the code version, the commit CI builds and tags
  the image from); the training step names its CUDA variant ``<tag>-cuda``, which
  runs on a GPU node and on a CPU node alike;
- the Kubernetes platform spec keeps to what every supported backend accepts
  (``MIN_BACKEND`` and newer): kfp-kubernetes 2.17 writes ``optional: false`` into
  secret- and ConfigMap-as-env, which backends before 2.15 refuse as an unknown field
  (kubeflow/pipelines#12495; 2.14 at run creation), and a ``*NameParameter`` beside a
  constant name, unknown before 2.5 (#11935): the name is written only in the field
  every backend knows, and ``optional: false`` (the default) not at all.

``check_backend`` refuses a server older than ``MIN_BACKEND`` before anything is
uploaded, with what to upgrade.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from qcloop.errors import PipelineError
from qcloop.settings import Settings

log = logging.getLogger(__name__)

# The oldest Kubeflow Pipelines backend the compiled pipelines run on, and why: the
# training step's node selector and tolerations come from run parameters
# (nodeSelectorJson, tolerationJson), which backends before 2.5.0 do not know (2.2-2.4.0
# fail the step in the driver; 2.4.1 drops them, leaving an invalid empty toleration).
MIN_BACKEND = (2, 5, 0)
CUDA_SUFFIX = "-cuda"
# executors that run on the CUDA variant of the image
CUDA_EXECUTORS = ("exec-train",)
# the platform-spec entries whose name kfp-kubernetes writes twice (a constant as both
# `<x>Name` and `<x>NameParameter`)
_NAMED = {"secretAsEnv": "secretName", "configMapAsEnv": "configMapName"}


def image_tag(settings: Settings) -> str:
    """The tag the compiled steps name: the setting, else this code's version."""
    from components.provenance import code_version

    return settings.pipelines.image_tag or code_version()


def platform_image(settings: Settings) -> str:
    """``<repository>:<tag>`` of the platform image for this code."""
    return f"{settings.pipelines.image}:{image_tag(settings)}"


def released_image(settings: Settings) -> bool:
    """Whether CI can have built the image the pipeline names (one commit, or a set tag)."""
    tag = image_tag(settings)
    return bool(settings.pipelines.image_tag) or not (tag == "unknown" or tag.endswith("-dirty"))


def compile_to(
    pipeline: Callable[..., Any], name: str, out: Path, settings: Settings | None = None
) -> Path:
    """Compile ``pipeline`` to KFP IR YAML at ``out``, ready for the supported backends."""
    from kfp import compiler

    from qcloop.settings import load_settings

    settings = settings or load_settings()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    image = platform_image(settings)
    name_images(docs[0], image)
    for platform in docs[1:]:
        for_old_backends(platform)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    if not released_image(settings):
        log.warning(
            "%s names %s, which no CI build made (uncommitted changes): commit and push, "
            "or build the image yourself and set pipelines.image_tag",
            out,
            image,
        )
    log.info("compiled %s -> %s (image %s)", name, out, image)
    return out


def name_images(spec: dict[str, Any], image: str) -> None:
    """Every executor runs ``image``; those in ``CUDA_EXECUTORS`` its CUDA variant."""
    for executor, body in spec["deploymentSpec"]["executors"].items():
        container = body.get("container")
        if container is not None:
            cuda = executor in CUDA_EXECUTORS or re.sub(r"-\d+$", "", executor) in CUDA_EXECUTORS
            container["image"] = image + (CUDA_SUFFIX if cuda else "")


def for_old_backends(platform: dict[str, Any]) -> None:
    """The platform spec without the fields older backends refuse (see the module doc).

    A ``*NameParameter`` that holds a constant becomes the plain name; one that holds a
    run parameter stays (every supported backend, 2.5.0 on, resolves it).
    """
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for config in executors.values():
        for field, name_field in _NAMED.items():
            for entry in config.get(field, []):
                parameter = entry.get(f"{name_field}Parameter") or {}
                constant = parameter.get("runtimeValue", {}).get("constant")
                if constant is not None:
                    del entry[f"{name_field}Parameter"]
                    entry[name_field] = constant
                if entry.get("optional") is False:
                    del entry["optional"]


def parse_version(text: str) -> tuple[int, ...] | None:
    """``2.4.1`` (or ``v2.4.1``, ``2.5.0-rc.1``) -> (2, 4, 1); None if it is not one."""
    found = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not found:
        return None
    return tuple(int(part or 0) for part in found.groups())


def check_backend(health: dict[str, Any], host: str) -> None:
    """``PipelineError`` when the server at ``host`` is older than ``MIN_BACKEND``.

    ``health`` is its healthz answer. Releases 2.4 to 2.15 were built without their
    version (``tag_name`` "unknown"); those from 2.14 on say ``pipeline_store``, which is
    enough. A server that cannot be placed is taken at its word, with a warning.
    """
    minimum = ".".join(map(str, MIN_BACKEND))
    version = str(health.get("tag_name") or "")
    found = parse_version(version)
    if found is None:
        if "pipeline_store" not in health:
            log.warning(
                "Kubeflow Pipelines at %s does not say its version (%r); qcloop's pipelines "
                "need %s or newer (older ones fail the training step)",
                host,
                version or None,
                minimum,
            )
        return
    if found < MIN_BACKEND:
        raise PipelineError(
            f"Kubeflow Pipelines at {host} is {version}; qcloop's pipelines need {minimum} or "
            "newer (the training step's node selector and tolerations are run parameters). "
            f"Upgrade Kubeflow Pipelines (standalone {minimum}+, or a Kubeflow release that "
            "ships it), then run again"
        )
