"""``qcloop release``, ``keys``, ``broker``, ``fleet`` and ``demo``: models to the shop floor."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path

from pipelines.cli.common import SubParsers, add, group
from qcloop.params import INT8_DEFAULT_DROP, VARIANTS
from qcloop.settings import Settings


def _release(args: argparse.Namespace, settings: Settings) -> int:
    from components.release import (
        MAX_INT8_DROP,
        build_release,
        watch_and_release,
    )
    from components.rollout import deliver
    from qcloop.contracts import Thresholds

    given = {"confidence": args.conf, "iou": args.iou, "feedback_below": args.feedback_below}
    # the thresholds the evaluation scored the model with, unless a value is given here
    thresholds = Thresholds(**{name: v for name, v in given.items() if v is not None})
    max_int8_drop = MAX_INT8_DROP if args.max_int8_drop is None else args.max_int8_drop
    if args.action == "watch":
        exporter = None
        if args.metrics_port:  # /metrics beside the loop: the fleet's releases and devices
            from components.fleet_metrics import serve_fleet_metrics

            fleet = args.fleet or settings.mqtt.fleet
            exporter = serve_fleet_metrics(
                settings,
                fleet,
                port=args.metrics_port,
                host=args.metrics_host,
                interval_s=args.interval,
            )
        try:
            watch_and_release(
                settings,
                interval_s=args.interval,
                released_by=args.by or "qcloop-release-bridge",
                thresholds=thresholds,
                fleet=args.fleet,
                variant=args.variant,
                max_int8_drop=max_int8_drop,
            )
        finally:
            if exporter is not None:
                exporter.close()
        return 0
    release = build_release(
        settings,
        ref=args.ref,
        released_by=args.by or getpass.getuser(),
        thresholds=thresholds,
        fleet=args.fleet,
        variant=args.variant,
        max_int8_drop=max_int8_drop,
    )
    topic = deliver(settings, release, canary=args.canary)
    message = release.message
    signer = f"signed by key {message.key_id}" if message.key_id else "UNSIGNED"
    print(
        f"released {message.model.name}/{message.model.version} on {topic} ({message.url}); "
        f"sequence {message.sequence}, {signer}, expires {message.expires_at:%Y-%m-%d %H:%M} UTC"
    )
    return 0


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from qcloop.signing import generate_keypair

    private, public = generate_keypair(Path(args.out), args.name)
    if args.name == "release":
        print(f"private key (bridge, keep secret): {private}\npublic key (devices): {public}")
    else:
        print(
            f"private key (approver {args.name}: keep it with them, secret; "
            f"`qcloop model approve VERSION --key {private}`): {private}\n"
            f"public key (the bridge's release.approvers): {public}"
        )
    return 0


def _broker(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from pipelines.broker import EmbeddedBroker

    with EmbeddedBroker(args.port, prefer=args.kind) as broker:
        print(f"{broker.kind} broker on {broker.url}; Ctrl-C stops it", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


def _fleet(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.fleet import fleet_states, fleet_table

    states = fleet_states(settings.mqtt, fleet=args.fleet, wait_s=args.wait)
    if args.json:
        for state in states:
            print(json.dumps(state))
    else:
        print(fleet_table(states) if states else "no device has reported yet")
        print(_rollout(settings, args.fleet or settings.mqtt.fleet))
    return 0


def _rollout(settings: Settings, fleet: str) -> str:
    from components.rollout import load_rollout, rollout_text
    from qcloop.errors import QcloopError
    from qcloop.storage import open_store

    try:
        rollout = load_rollout(open_store(settings.store), fleet)
    except QcloopError as exc:
        return f"\nrollout of fleet {fleet}: not read ({exc})"
    return "\n" + (rollout_text(rollout) if rollout else f"no staged rollout in fleet {fleet}")


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.demo import DemoOptions, run_demo

    options = DemoOptions(
        data=Path(args.data) if args.data else None,
        home=Path(args.home),
        epochs=args.epochs,
        imgsz=args.imgsz,
        frames=args.frames,
        summary=Path(args.summary),
        rounds=args.rounds,
        min_map50_95=args.min_map,
        tolerance=args.tolerance,
    )
    run_demo(options)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value


def _add_release(sub: SubParsers) -> None:
    p = add(sub, "release", _release, "publish the approved model to the fleet over MQTT")
    p.add_argument(
        "action",
        nargs="?",
        choices=["once", "watch"],
        default="once",
        help="once (default), or watch: the bridge service, publishing whenever the alias moves",
    )
    p.add_argument("--interval", type=float, default=30.0, help="watch: seconds between polls")
    p.add_argument(
        "--metrics-port",
        type=int,
        help="watch: serve Prometheus metrics (releases, devices from their heartbeats) on "
        "this port, read every --interval (default: none)",
    )
    p.add_argument(
        "--metrics-host", default="127.0.0.1", help="watch: address of the metrics server"
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="auto",
        help="which ONNX to ship; auto: the INT8 when its test mAP50-95 is within "
        f"{INT8_DEFAULT_DROP:g} of the FP32's, else the FP32",
    )
    p.add_argument(
        "--max-int8-drop",
        type=float,
        help="int8: refuse it if its test mAP50-95 is more than this below the FP32's "
        "(default: components.release.MAX_INT8_DROP, 0.02)",
    )
    p.add_argument("--ref", help="version or alias (default: production alias)")
    p.add_argument(
        "--canary",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="once: a staged rollout, the canaries first (default: when "
        "release.canary_devices is set); `qcloop release watch` takes it on to the fleet",
    )
    p.add_argument("--fleet", help="fleet (default: mqtt.fleet)")
    p.add_argument("--by", help="who releases (default: current user)")
    p.add_argument(
        "--conf", type=float, help="confidence threshold on devices (default: the evaluation's)"
    )
    p.add_argument("--iou", type=float, help="NMS IoU on devices (default: the evaluation's)")
    p.add_argument("--feedback-below", type=float, help="send back if best score below (0.5)")


def register(sub: SubParsers) -> None:
    """Add the release, keys, broker, fleet and demo commands to the ``qcloop`` parser."""
    _add_release(sub)
    keys = group(sub, "keys", "signing keys (Ed25519): the bridge's release key, approvers' keys")
    p = add(keys, "generate", _keys, "write a new key pair: NAME.key (private) + NAME.pub")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--name",
        default="release",
        help="release (default): the bridge's key, devices trust NAME.pub; an approver's "
        "name (e.g. alice): their approval key, the bridge's release.approvers trust NAME.pub",
    )
    p = add(sub, "broker", _broker, "run the embedded MQTT broker in the foreground")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--kind", choices=["auto", "mosquitto", "amqtt"], default="auto")
    p = add(sub, "fleet", _fleet, "list the devices: which model each runs, since when, health")
    p.add_argument("--fleet", help="only this fleet")
    p.add_argument("--json", action="store_true", help="one JSON line per device")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect retained states")
    from pipelines.demo import DemoOptions as Demo

    p = add(sub, "demo", _demo, "run the whole loop on one machine (the quickstart)")
    p.add_argument("--data", help="YOLO folder to use instead of synthetic images")
    p.add_argument("--home", default=str(Demo.home), help="state folder (reset each run)")
    p.add_argument("--epochs", type=int, default=Demo.epochs, help="training epochs a round")
    p.add_argument("--imgsz", type=int, default=Demo.imgsz, help="training image size")
    p.add_argument(
        "--frames", type=int, default=Demo.frames, help="frames the camera shows a round"
    )
    p.add_argument(
        "--rounds",
        type=_positive,
        default=Demo.rounds,
        help="turns of the loop; each after the first labels the edge's feedback in a "
        "Label Studio the demo starts (scripts/install-label-studio.sh), trains, gates, "
        "releases",
    )
    p.add_argument(
        "--min-map",
        type=float,
        default=Demo.min_map50_95,
        help="gate: minimum mAP50-95 (default: a smoke run's 0)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=Demo.tolerance,
        help="gate: how far below production a model on new data may score (default: a "
        "smoke run's 1.0, every model passes; the gate's reason still says how it compared)",
    )
    p.add_argument(
        "--summary", default=str(Demo.summary), help="summary JSON; the loop report beside it"
    )
