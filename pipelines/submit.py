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
against the compiled pipeline's parameter types, see ``typed_arguments``); environment
values such as the S3 endpoint travel in ``settings_json``, secrets only through
the cluster's Secret (``secret_name``), never as parameters.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from qcloop.errors import PipelineError
from qcloop.settings import Settings

SECRET_FIELDS = ("access_key", "secret_key", "password")


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


def cluster_settings_json(settings: Settings) -> str:
    """The settings a step needs, without any secret (those come from the Secret)."""
    data = json.loads(settings.model_dump_json())
    for section in data.values():
        if isinstance(section, dict):
            for field in SECRET_FIELDS:
                section.pop(field, None)
    return json.dumps(data)


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


def version_name() -> str:
    """The pipeline version's name: the code version; with the time if it has local changes."""
    from components.registry import code_version

    code = code_version()
    if code == "unknown" or code.endswith("-dirty"):  # not one commit: never reuse it
        return f"{code}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    return code


def upload_version(client: Any, package: Path) -> PipelineVersion:
    """``package`` as this code's version of the training pipeline (uploaded unless there).

    The first upload creates the pipeline; KFP names its first version like the
    pipeline, so this code's version is uploaded beside it, named as always.
    """
    from pipelines.training import PIPELINE_NAME

    name = version_name()
    description = f"qcloop training pipeline, code {name}"
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


def upload(host: str) -> PipelineVersion:
    """Compile the training pipeline and upload it to ``host`` as this code's version."""
    from pipelines.training import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="qcloop-upload-") as tmp:
        package = compile_pipeline(Path(tmp) / "training.yaml")
        with kfp_errors(host):
            return upload_version(kfp_client(host), package)


def submit(
    settings: Settings,
    *,
    host: str,
    params: dict[str, Any],
    experiment: str = "qcloop",
    schedule: str | None = None,
    run_name: str | None = None,
    namespace: str | None = None,
) -> str:
    """Upload the training pipeline and start (or schedule) a run; return the run or job id.

    ``namespace``: the Kubeflow profile of the experiment and its runs (multi-user
    Kubeflow); None for a single-user one.
    """
    from components.registry import code_version
    from components.train import LATEST
    from pipelines.training import PIPELINE_NAME, check_params, compile_pipeline

    check_params(params)
    if schedule is not None:
        check_cron(schedule)
    if "dataset_version" not in params:
        from qcloop.dataset import known_versions

        versions = known_versions(settings)
        if not versions:
            raise PipelineError("no dataset version in the object store; import data first")
        # a run trains on today's newest version; each run of a schedule on the newest then
        params = {**params, "dataset_version": LATEST if schedule else versions[-1]}
    arguments = {
        "settings_json": cluster_settings_json(settings),
        "tracking_uri": settings.mlflow.tracking_uri,
        "model_name": settings.mlflow.model_name,
        "experiment": settings.mlflow.experiment,
        "code_version": code_version(),
    } | params
    name = run_name or f"{PIPELINE_NAME}-{arguments['dataset_version']}"
    with tempfile.TemporaryDirectory(prefix="qcloop-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "training.yaml")
        arguments = typed_arguments(package, arguments)
        with kfp_errors(host):
            client = kfp_client(host)
            version = upload_version(client, package)
            print(
                f"pipeline {PIPELINE_NAME} version {version.name} "
                + ("uploaded" if version.uploaded else "already there")
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
            return str(run.run_id)
