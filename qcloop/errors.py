"""Exceptions of qcloop, one tree so that callers catch at the level they need.

    QcloopError                  anything qcloop raises on purpose
    ├── ConfigError              a settings file or variable is wrong
    ├── ContractError            a payload breaks one of the contracts
    ├── DatasetError             a YOLO folder or dataset version is bad
    ├── StoreError               the object store failed
    │   ├── StoreUnavailable     it cannot be reached
    │   └── ObjectNotFound       the key is not there
    ├── IntegrityError           bytes do not match their sha256 (or signature)
    ├── BrokerUnavailable        the MQTT broker cannot be reached
    ├── RegistryError            MLflow refused or is down
    │   └── NotRegisteredError   the model, version or alias is not registered (yet)
    └── PipelineError            a pipeline step failed

Every message names the item (file, field, key, URL) and says what to do.
"""

from __future__ import annotations


class QcloopError(Exception):
    """Base of every error qcloop raises on purpose."""


class ConfigError(QcloopError):
    """A settings file or environment variable is invalid."""


class ContractError(QcloopError):
    """A payload does not satisfy its contract (schema)."""


class DatasetError(QcloopError):
    """A YOLO folder or a dataset version is invalid or missing."""


class StoreError(QcloopError):
    """The object store failed."""


class StoreUnavailable(StoreError):
    """The object store cannot be reached."""


class ObjectNotFound(StoreError):
    """The requested key does not exist in the object store."""


class IntegrityError(QcloopError):
    """Bytes do not match their expected sha256, size or signature."""


class BrokerUnavailable(QcloopError):
    """The MQTT broker cannot be reached."""


class RegistryError(QcloopError):
    """The model registry (MLflow) refused a request or is unreachable."""


class NotRegisteredError(RegistryError):
    """The model, version or alias asked for is not in the registry (yet)."""


class PipelineError(QcloopError):
    """A pipeline step failed."""
