"""Submit the compiled training pipeline to a Kubeflow Pipelines cluster.

``qcloop pipeline upload --host URL`` uploads the compiled package as a version
of the pipeline ``qcloop-training`` (created on the first upload), named by the
code version (git commit, or ``$QCLOOP_CODE_VERSION`` in the image): the Kubeflow
UI lists which code each run used, and the same code is uploaded once.
``qcloop pipeline submit --host URL`` does that, then starts a run of that version;
``--schedule CRON`` creates a recurring run of it instead (KFP cron, 6 fields, one
run at a time, no catch-up), pinned to that pipeline version and training each
time on the newest dataset version (``dataset_version=latest``).

Authentication: ``$KF_PIPELINES_TOKEN`` (a bearer token), else the projected
ServiceAccount token at ``$KF_PIPELINES_SA_TOKEN_PATH`` (default
``/var/run/secrets/kubeflow/pipelines/token``) when the file exists, else none
(a single-user Kubeflow behind a port-forward).

Parameters come from ``--param name=value`` (JSON values allowed, then checked
against the compiled pipeline's parameter types, see ``typed_arguments``). Nothing of
the submitter's settings travels: the steps read the cluster's endpoints and
credentials from the ConfigMap and Secret ``qcloop-platform`` of the namespace they
run in (the chart renders them), so a run submitted from a laptop behind
port-forwards trains exactly as one started from the Kubeflow UI.

Before anything is uploaded, the server's version is checked against
``pipelines.ir.MIN_BACKEND``, and the code must be one that CI built the image of
(a commit, or ``pipelines.image_tag`` set): the pipeline names that image.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from pipelines.ir import released_image
from qcloop.errors import PipelineError
from qcloop.settings import Settings

log = logging.getLogger(__name__)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs; values are JSON when they parse as JSON, else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PipelineError(f"--param '{pair}': write it as name=value")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


# KFP parameter types of the compiled pipeline -> the Python types a run must send
_KIND_WORDS = {
    "STRING": "text",
    "NUMBER_INTEGER": "a whole number (e.g. 30)",
    "NUMBER_DOUBLE": "a number (e.g. 0.5)",
    "BOOLEAN": "true or false",
    "STRUCT": "a JSON object",
    "LIST": "a JSON list",
}
_KFP_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (float, int),
    "BOOLEAN": (bool,),
    "STRUCT": (dict,),
    "LIST": (list,),
}


def typed_arguments(package: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` checked against the pipeline's parameters, as the types KFP expects.

    ``--param device=0`` parses as the number 0, but ``device`` is a string: KFP
    refuses the run for that, so such a value becomes its text. A name the
    pipeline does not have, or a value of the wrong kind (text for a number), is a
    ``PipelineError`` that names the parameter and its type.
    """
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text()))
    declared = spec["root"]["inputDefinitions"]["parameters"]
    typed: dict[str, Any] = {}
    for name, value in arguments.items():
        if name not in declared:
            raise PipelineError(
                f"--param {name}: the training pipeline has no such parameter; "
                f"it has {', '.join(sorted(declared))}"
            )
        kind = declared[name]["parameterType"]
        wanted = _KFP_TYPES.get(kind, (object,))
        if kind == "STRING" and isinstance(value, (int, float, bool)):
            value = json.dumps(value)  # 0 -> "0", true -> "true"
        ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
        if not ok:
            raise PipelineError(
                f"--param {name}={json.dumps(value)}: {name} takes "
                f"{_KIND_WORDS.get(kind, kind.lower())}"
            )
        typed[name] = float(value) if kind == "NUMBER_DOUBLE" else value
    return typed


def check_cron(schedule: str) -> None:
    """``PipelineError`` unless ``schedule`` is a KFP cron: 6 fields, seconds first, or @-form.

    A 5-field crontab line is the usual slip: KFP would read its minute as seconds.
    """
    fields = schedule.split()
    if schedule.strip().startswith("@") or len(fields) == 6:
        return
    hint = f"'0 {' '.join(fields)}'" if len(fields) == 5 else "'0 0 2 * * *' (02:00 daily)"
    raise PipelineError(
        f"--schedule '{schedule}': Kubeflow Pipelines takes a 6-field cron with seconds first "
        f"(or @hourly, @daily, @every 6h); e.g. {hint}"
    )


class PipelineVersion(NamedTuple):
    """A version of the training pipeline on a KFP server."""

    pipeline_id: str
    version_id: str
    name: str
    uploaded: bool  # False when a version of the same code was there already


TOKEN_ENV = "KF_PIPELINES_TOKEN"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"


def kfp_client(host: str) -> Any:
    """A ``kfp.Client`` for ``host`` with the credentials this process has (module doc).

    kfp itself uses the ServiceAccount token only when it finds the API without a
    host, and reads no token from the environment.
    """
    from kfp import Client
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token = os.environ.get(TOKEN_ENV) or None
    token_path = os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH
    credentials = None
    if token is None and Path(token_path).is_file():
        credentials = ServiceAccountTokenVolumeCredentials(path=token_path)
    return Client(host=host, existing_token=token, credentials=credentials)


@contextmanager
def kfp_errors(host: str) -> Iterator[None]:
    """Any failure of the KFP client becomes one ``PipelineError`` naming the host."""
    try:
        yield
    except PipelineError:
        raise
    except Exception as exc:  # kfp raises urllib3, ApiException, ValueError...
        first = (str(exc).splitlines() or [""])[0][:200]
        raise PipelineError(
            f"Kubeflow Pipelines at {host} refused or is unreachable "
            f"({type(exc).__name__}: {first}); check --host, the token "
            f"(${TOKEN_ENV} or ${SA_TOKEN_PATH_ENV}) and that the KFP API is reachable "
            "(kubectl -n kubeflow port-forward svc/ml-pipeline 8888:8888)"
        ) from None


def version_name(settings: Settings) -> str:
    """The pipeline version's name: the image tag (the code version); with the time when the
    code is not exactly that image's (a tag set by hand), so that it is never reused."""
    from components.provenance import code_version
    from pipelines.ir import image_tag

    tag = image_tag(settings)
    if tag == code_version() and released_image(settings):
        return tag
    return f"{tag}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def server_health(client: Any) -> dict[str, Any]:
    """The server's healthz answer as sent (``tag_name``, ``commit_sha``, ``multi_user``, ...):
    kfp's own model of it keeps only ``multi_user`` and ``pipeline_store``."""
    body = client._healthz_api.api_client.call_api(
        "/apis/v2beta1/healthz",
        "GET",
        response_type="object",
        auth_settings=["Bearer"],
        _return_http_data_only=True,
    )
    return body if isinstance(body, dict) else {}


def ready_client(host: str, settings: Settings) -> Any:
    """A client for ``host`` after the checks: a supported server, an image CI built."""
    from pipelines.ir import check_backend, platform_image

    if not released_image(settings):
        raise PipelineError(
            f"the pipeline would name {platform_image(settings)}, which no CI build made "
            "(uncommitted changes): commit and push (CI builds and tags the image of every "
            "commit on main), or build and push the image yourself and set "
            "QCLOOP_PIPELINES__IMAGE_TAG (and QCLOOP_PIPELINES__IMAGE) to it"
        )
    client = kfp_client(host)
    check_backend(server_health(client), host)
    return client


def upload_version(client: Any, package: Path, name: str) -> PipelineVersion:
    """``package`` as version ``name`` of the training pipeline (uploaded unless there).

    The first upload creates the pipeline; KFP names its first version like the
    pipeline, so this code's version is uploaded beside it, named as always.
    """
    from pipelines.training import PIPELINE_NAME

    description = f"qcloop training pipeline, image tag {name}"
    pipeline_id = client.get_pipeline_id(PIPELINE_NAME)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(
            str(package), pipeline_name=PIPELINE_NAME, description="qcloop training pipeline"
        ).pipeline_id
    same = client.list_pipeline_versions(pipeline_id, filter=_name_filter(name)).pipeline_versions
    if same:
        return PipelineVersion(str(pipeline_id), str(same[0].pipeline_version_id), name, False)
    version = client.upload_pipeline_version(
        str(package), name, pipeline_id=pipeline_id, description=description
    )
    return PipelineVersion(str(pipeline_id), str(version.pipeline_version_id), name, True)


def _name_filter(name: str) -> str:
    """A KFP list filter: display_name equals ``name``."""
    predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
    return json.dumps({"predicates": [predicate]})


def upload(host: str, settings: Settings) -> PipelineVersion:
    """Compile the training pipeline and upload it to ``host`` as this code's version."""
    from pipelines.training import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="qcloop-upload-") as tmp:
        package = compile_pipeline(Path(tmp) / "training.yaml", settings)
        with kfp_errors(host):
            return upload_version(ready_client(host, settings), package, version_name(settings))


def submit(
    settings: Settings,
    *,
    host: str,
    params: dict[str, Any],
    experiment: str = "qcloop",
    schedule: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
    wait_s: float | None = None,
) -> str:
    """Upload the training pipeline and start (or schedule) a run; return the run or job id.

    ``wait_s``: wait up to that long for the run to end; ``PipelineError`` unless it
    succeeded (a smoke run in CI, the docs' first run).

    ``settings`` name the image only (``pipelines.*``); ``params`` are the run's
    parameters (``dataset_version`` defaults to ``latest``: the newest version when the
    run starts). ``namespace``: the Kubeflow profile of the experiment and its runs
    (multi-user Kubeflow); None for a single-user one.
    """
    from pipelines.training import LATEST, PIPELINE_NAME, check_params, compile_pipeline

    if schedule is not None:
        check_cron(schedule)
        if wait_s is not None:
            raise PipelineError("--wait waits for a run to end; a --schedule starts none now")
    arguments = {"dataset_version": LATEST, **params}
    name = run_name or f"{PIPELINE_NAME}-{arguments['dataset_version']}"
    with tempfile.TemporaryDirectory(prefix="qcloop-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "training.yaml", settings)
        arguments = typed_arguments(package, arguments)
        check_params(arguments)  # the values the types allow, e.g. approval auto|manual
        with kfp_errors(host):
            client = ready_client(host, settings)
            version = upload_version(client, package, version_name(settings))
            log.info(
                "pipeline %s version %s %s",
                PIPELINE_NAME,
                version.name,
                "uploaded" if version.uploaded else "already there",
            )
            exp = client.create_experiment(experiment, namespace=namespace or None)
            if schedule:
                job = client.create_recurring_run(
                    experiment_id=exp.experiment_id,
                    job_name=name,
                    cron_expression=schedule,
                    max_concurrency=1,
                    no_catchup=True,
                    params=arguments,
                    pipeline_id=version.pipeline_id,
                    version_id=version.version_id,
                )
                return str(job.recurring_run_id)
            run = client.run_pipeline(
                experiment_id=exp.experiment_id,
                job_name=name,
                params=arguments,
                pipeline_id=version.pipeline_id,
                version_id=version.version_id,
            )
            if wait_s is not None:
                wait_for_run(client, str(run.run_id), wait_s, host)
            return str(run.run_id)


ENDED = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")
WAIT_POLL_S = 10.0


def wait_for_run(client: Any, run_id: str, timeout_s: float, host: str) -> None:
    """Wait until run ``run_id`` ends; ``PipelineError`` unless it succeeded in time."""
    import time

    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = str(client.get_run(run_id).state or "UNKNOWN")
        if state in ENDED:
            break
        log.info("run %s: %s", run_id, state)
        time.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
    if state == "SUCCEEDED":
        log.info("run %s succeeded", run_id)
        return
    said = "did not end" if state not in ENDED else f"ended {state}"
    raise PipelineError(
        f"run {run_id} on {host} {said} within {timeout_s:.0f} s (state {state}); "
        "its steps' logs are in the Kubeflow UI (Runs), or "
        "`kubectl -n <run namespace> logs -l pipeline/runid=" + run_id + " --all-containers`"
    )
