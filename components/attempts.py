"""Whether a training run has anything new to learn, and the memory of those that ended.

A run is known by its *training key*: a hash of the dataset version, the code
version and the parameters that decide the model and the gate. A run that ends
(registered, or refused by the gate) leaves an MLflow run tagged with its key in
the experiment. A later run with the same key would train the same model again
(nightly retraining on a dataset that did not change): it is told so at its first
step, trains nothing, registers nothing and releases nothing. Change the seed, or
any other parameter, to train again on the same data on purpose.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, NamedTuple

from components.provenance import code_version
from components.recipes import recipe_members
from components.registry import TRAINING_KEY_TAG, _client, _experiment_id, _mlflow_errors
from qcloop.contracts import EvalMetrics
from qcloop.params import MODEL_DECIDING, TRAINING_RECIPE, TrainingParams
from qcloop.settings import Settings

log = logging.getLogger(__name__)

LATEST = "latest"
REFUSED_TAG = "qcloop.gate_refused"


class Plan(NamedTuple):
    """The first step's answer: the dataset version to train on and whether to train."""

    version: str
    key: str
    fresh: bool
    reason: str
    params_json: str  # how the model is trained, as the registry records it


def training_key(dataset_version: str, code: str, params: dict[str, Any]) -> str:
    """A short, stable hash of what decides a run's model and its gate."""
    text = json.dumps(
        {"dataset_version": dataset_version, "code_version": code, "params": params},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def resolve_version(settings: Settings, version: str) -> str:
    """``version`` itself, or for ``latest`` the newest dataset version in the store now.

    A recurring run asks for ``latest`` so that each run trains on the data labelled
    by then; the resolved name is what the run records (lineage, cache key).
    ``DatasetError`` if ``latest`` is asked and the store holds no version.
    """
    if version != LATEST:
        return version
    from qcloop.dataset import newest_version

    newest = newest_version(settings)
    log.info("latest dataset version: %s", newest)
    return newest


def plan_run(settings: Settings, version: str, params: TrainingParams) -> Plan:
    """Resolve the version, compute the key, and look for an ended run with that key.

    ``PipelineError`` for a recipe that names no known recipe, before anything runs.
    """
    recipe_members(params.recipe)
    resolved = resolve_version(settings, version)
    code = code_version()
    key = training_key(resolved, code, params.picked(MODEL_DECIDING))
    recorded = json.dumps(params.picked(TRAINING_RECIPE), sort_keys=True)
    if code == "unknown" or code.endswith("-dirty"):  # not one commit: never the same code
        return Plan(resolved, key, True, f"code {code}: trained whatever ran before", recorded)
    ended = ended_run(settings, key)
    if ended is None:
        log.info("dataset %s, code %s: new, training (key %s)", resolved, code, key)
        return Plan(resolved, key, True, "new dataset version, code or parameters", recorded)
    reason = (
        f"dataset {resolved}, code {code} and these parameters already ran to the end "
        f"(MLflow run {ended}): nothing new to learn; change a parameter (e.g. seed) to "
        "train again on purpose"
    )
    return Plan(resolved, key, False, reason, recorded)


def ended_run(settings: Settings, key: str) -> str | None:
    """Id of an MLflow run of the experiment tagged with ``key``, or None."""
    mlflow = settings.mlflow
    client = _client(mlflow.tracking_uri)
    what = f"runs of experiment '{mlflow.experiment}'"
    with _mlflow_errors(mlflow.tracking_uri, what, "check mlflow.tracking_uri"):
        experiment = client.get_experiment_by_name(mlflow.experiment)
        if experiment is None:
            return None
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TRAINING_KEY_TAG}` = '{key}'",
            max_results=1,
        )
    return str(found[0].info.run_id) if found else None


def record_refusal(
    settings: Settings,
    *,
    training_key: str,
    dataset_version: str,
    reason: str,
    metrics: EvalMetrics,
) -> str:
    """An MLflow run that keeps a gate's refusal (key, reason, metrics); return its id."""
    from mlflow.entities import Metric

    from qcloop.contracts import utcnow

    mlflow = settings.mlflow
    client = _client(mlflow.tracking_uri)
    what = f"refusal of dataset {dataset_version} (experiment '{mlflow.experiment}')"
    with _mlflow_errors(mlflow.tracking_uri, what, "check mlflow.tracking_uri"):
        run = client.create_run(
            _experiment_id(client, mlflow.tracking_uri, mlflow.experiment),
            tags={
                "dataset_version": dataset_version,
                "code_version": code_version(),
                TRAINING_KEY_TAG: training_key,
                REFUSED_TAG: reason[:5000],
            },
        )
        run_id = str(run.info.run_id)
        now = int(utcnow().timestamp() * 1000)
        values = metrics.model_dump(exclude_none=True).items()
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values])
        client.set_terminated(run_id)
    return run_id
