"""The fleet benchmark's release bridge, in a process of its own as it runs in production.

    python -m benchmarks.fleet_bridge < JOB.json     (one JSON object out, on stdout)

``release``: the next model of the fleet, published with the product's ``claim_sequence``
and ``publish_release`` (the sequence claimed in the store, the envelope signed, retained
on the fleet's topic, kept in the store), named by ``s3://`` or by a presigned URL
(``components.release.model_location``); out: when it began (``time.monotonic()``, the
same clock in every process) and how long it took. ``read``: the bridge's own read of the
fleet (``qcloop.devices.fleet_states``, as its metrics and canary rollouts read it), and
how long a new subscriber waits for every device's retained state.

Its own process matters: a process that holds a thousand device sockets gives paho's
threaded loop (``select``) descriptors above 1024, which it cannot wait on.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from components.release import claim_sequence, model_key, model_location, publish_release
from qcloop.contracts import ModelRef, ReleaseMessage, utcnow
from qcloop.devices import STATE_FILTER, fleet_states
from qcloop.mqtt import connect, make_client
from qcloop.settings import MlflowSettings, MqttSettings, ReleaseSettings, Settings, StoreSettings
from qcloop.signing import load_private_key
from qcloop.storage import open_store

MODEL = "qcloop-detector"


def settings_of(job: dict[str, Any]) -> Settings:
    """The bridge's settings: its MQTT user, the store, the signing key."""
    return Settings(
        store=StoreSettings.model_validate(job["store"]),
        mlflow=MlflowSettings(model_name=MODEL),
        mqtt=MqttSettings(
            url=job["mqtt_url"], username=job["user"], password=job["password"], fleet=job["fleet"]
        ),
        release=ReleaseSettings(
            signing_key=job["key_file"], presigned_urls=job.get("presigned", False)
        ),
    )


def release(settings: Settings, job: dict[str, Any]) -> dict[str, float]:
    """Publish model ``job['version']`` to the fleet as the bridge does."""
    started = time.monotonic()
    version, fleet = job["version"], settings.mqtt.fleet
    store = open_store(settings.store)
    key = model_key(MODEL, version)
    now = utcnow()
    url, valid_for = model_location(settings, store, key)  # as the bridge names the model

    def make(sequence: int) -> ReleaseMessage:
        return ReleaseMessage(
            fleet=fleet,
            model=ModelRef(name=MODEL, version=version),
            sha256=job["sha256"],
            size=job["size"],
            url=url,
            input_size=480,
            class_names=["scratch"],
            released_at=now,
            released_by="bench_fleet",
            sequence=sequence,
            expires_at=now + valid_for,
        )

    signing_key = load_private_key(settings.release.signing_key)  # type: ignore[arg-type]
    publish_release(settings, claim_sequence(settings, store, fleet, make, signing_key))
    return {"t0": started, "bridge_s": round(time.monotonic() - started, 3)}


def read(settings: Settings, devices: int) -> dict[str, Any]:
    """``fleet_states`` as the bridge calls it, and a new subscriber's wait for them all."""
    started = time.monotonic()
    rows = fleet_states(settings.mqtt, fleet=settings.mqtt.fleet)
    took = time.monotonic() - started
    seen: set[str] = set()
    done = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        if message.retain:
            seen.add(message.topic)
            if len(seen) >= devices:
                done.set()

    client = make_client(settings.mqtt)
    client.on_connect = lambda c, *_: c.subscribe(STATE_FILTER, qos=1)
    client.on_message = on_message
    begun = time.monotonic()
    connect(client, settings.mqtt)
    client.loop_start()
    done.wait(60)
    retained = time.monotonic() - begun
    client.disconnect()
    client.loop_stop()
    return {
        "devices": len(rows),
        "of": devices,
        "s": round(took, 2),
        "all_retained_s": round(retained, 2) if done.is_set() else None,
    }


def main() -> int:
    job = json.load(sys.stdin)
    settings = settings_of(job)
    out = release(settings, job) if job["do"] == "release" else read(settings, job["devices"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
