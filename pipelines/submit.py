"""Submit the compiled training pipeline to a Kubeflow Pipelines cluster.

``qcloop pipeline submit --host URL`` uploads the pipeline package and starts a
run; ``--schedule CRON`` creates a recurring run instead (KFP cron, 6 fields).
Parameters come from ``--param name=value`` (JSON values allowed); environment
values such as the S3 endpoint travel in ``settings_json``, secrets only through
the cluster's Secret (``secret_name``), never as parameters.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

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


def cluster_settings_json(settings: Settings) -> str:
    """The settings a step needs, without any secret (those come from the Secret)."""
    data = json.loads(settings.model_dump_json())
    for section in data.values():
        if isinstance(section, dict):
            for field in SECRET_FIELDS:
                section.pop(field, None)
    return json.dumps(data)


def submit(
    settings: Settings,
    *,
    host: str,
    params: dict[str, Any],
    experiment: str = "qcloop",
    schedule: str | None = None,
    run_name: str | None = None,
) -> str:
    """Upload and start (or schedule) the training pipeline; return the run or job id."""
    from kfp import Client

    from pipelines.training import PIPELINE_NAME, check_params, compile_pipeline

    check_params(params)

    if "dataset_version" not in params:  # a schedule trains on the newest version
        from qcloop.dataset import known_versions

        versions = known_versions(settings)
        if not versions:
            raise PipelineError("no dataset version in the object store; import data first")
        params = {**params, "dataset_version": versions[-1]}
    arguments = {
        "settings_json": cluster_settings_json(settings),
        "tracking_uri": settings.mlflow.tracking_uri,
        "model_name": settings.mlflow.model_name,
        "experiment": settings.mlflow.experiment,
    } | params
    name = run_name or f"{PIPELINE_NAME}-{arguments.get('dataset_version', 'latest')}"
    with tempfile.TemporaryDirectory(prefix="qcloop-submit-") as tmp:
        package = compile_pipeline(Path(tmp) / "training.yaml")
        try:
            client = Client(host=host)
            if schedule:
                exp = client.create_experiment(experiment)
                job = client.create_recurring_run(
                    experiment_id=exp.experiment_id,
                    job_name=name,
                    cron_expression=schedule,
                    pipeline_package_path=str(package),
                    params=arguments,
                )
                return str(job.recurring_run_id)
            run = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=name, experiment_name=experiment
            )
            return str(run.run_id)
        except Exception as exc:  # kfp raises urllib3, ApiException, ValueError...
            raise PipelineError(
                f"Kubeflow Pipelines at {host} refused or is unreachable "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); check --host and "
                "that the KFP API is reachable (kubectl port-forward svc/ml-pipeline-ui 8888:80)"
            ) from None
