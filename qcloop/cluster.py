"""What the Helm chart gives a pipeline run's pods, as the compiled pipelines read it.

A contract between ``charts/qcloop`` (templates/pipelines/platform.yaml) and the
pipelines (``pipelines/training.py``): kept here, free of kfp, so that the chart's
tests check the one against the other without the platform's packages.
"""

from __future__ import annotations

__all__ = [
    "CONFIG_ENV",
    "LABEL_STUDIO_SECRET_ENV",
    "MLFLOW_SECRET_ENV",
    "PLATFORM_OBJECT",
    "REGISTRY_SECRET_ENV",
    "SECRET_ENV",
    "STORE_SECRET_ENV",
]

# The ConfigMap and Secret the chart renders into every namespace where runs execute
# (value pipelines.namespaces): the cluster's endpoints and credentials. Their names
# are constants of the compiled pipeline, and every key is required (KFP backends before
# 2.15 cannot make one optional); the keys of the ConfigMap are the variables they become.
PLATFORM_OBJECT = "qcloop-platform"
CONFIG_ENV = (
    "QCLOOP_HOME",
    "QCLOOP_WORKSPACE",
    "QCLOOP_STORE__KIND",
    "QCLOOP_STORE__ENDPOINT",
    "QCLOOP_STORE__BUCKET",
    "QCLOOP_STORE__REGION",
    "QCLOOP_DVC__REMOTE",
    "QCLOOP_DVC__ENDPOINT_URL",
    "QCLOOP_MLFLOW__TRACKING_URI",
    "QCLOOP_MLFLOW__MODEL_NAME",
    "QCLOOP_LABEL_STUDIO__URL",
)
# keys of the Secret -> variables; each step gets only the credentials it uses
STORE_SECRET_ENV = {
    "store-access-key": "QCLOOP_STORE__ACCESS_KEY",
    "store-secret-key": "QCLOOP_STORE__SECRET_KEY",
}
# MLflow's own client variables (its basic-auth app, chart value mlflow.auth.enabled); empty
# values when MLflow demands no login, which MLflow takes as unset
MLFLOW_SECRET_ENV = {
    "mlflow-username": "MLFLOW_TRACKING_USERNAME",
    "mlflow-password": "MLFLOW_TRACKING_PASSWORD",
}
REGISTRY_SECRET_ENV = {**STORE_SECRET_ENV, **MLFLOW_SECRET_ENV}
LABEL_STUDIO_SECRET_ENV = {"label-studio-token": "QCLOOP_LABEL_STUDIO__TOKEN"}
SECRET_ENV = {**STORE_SECRET_ENV, **MLFLOW_SECRET_ENV, **LABEL_STUDIO_SECRET_ENV}
