"""Edge team's room: the shop-floor agent (onnxruntime + MQTT + the raw store).

It imports the core (``qcloop``) and small libraries only - onnxruntime, numpy,
Pillow, paho-mqtt, minio, pydantic (prometheus-client only with metrics on) - never
torch, ultralytics, mlflow, kfp, dvc, nor another room. Layers:

- pure: ``inference`` (letterbox, decode, ``Detector``; NMS is ``qcloop.boxes``),
  ``config``, ``stats``, ``backoff`` (retry delays),
  ``policies`` (which frames go back: band, defects, count, random; limits, dedup)
- I/O: ``sources`` (hot folder, simulated camera), ``link`` (MQTT),
  ``trust`` (a release's signature, fleet, expiry and sequence; the sequence on disk),
  ``fetch`` (download capped at the signed size, sha256; a fleet's random wait first),
  ``release`` (verified, loaded, smoke-tested, retried with backoff),
  ``history`` (last good models, with their signed envelopes), ``trial`` (a new model
  on trial until it served), ``rejected`` (models never loaded again),
  ``spool`` (on-disk store and forward),
  ``feedback`` (spool -> raw store, with backoff), ``verdicts`` (operator verdicts on
  recent frames), ``sdnotify`` (systemd), ``fsutil``, ``guard`` (a frame that killed the
  agent is set aside), ``retention`` (set-aside folders pruned), ``health`` (the heartbeat),
  ``metrics`` (Prometheus ``/metrics``, read from the counters; off by default)
- job: ``agent`` (the loop), ``cli`` (``qcloop-edge``)

``qcloop-edge.service`` is the systemd unit (docs/edge.md).
"""

from edge_agent.agent import Agent
from edge_agent.config import EdgeConfig, load_config
from edge_agent.errors import ImageError, ModelError
from edge_agent.inference import Detector
from edge_agent.sources import FolderSource, Frame, FrameSource, SimulatedCameraSource
from edge_agent.spool import Spool
from edge_agent.stats import AgentStats
from qcloop.devices import DeviceState

__all__ = [
    "Agent",
    "AgentStats",
    "Detector",
    "DeviceState",
    "EdgeConfig",
    "FolderSource",
    "Frame",
    "FrameSource",
    "ImageError",
    "ModelError",
    "SimulatedCameraSource",
    "Spool",
    "load_config",
]
