"""``qcloop labelling ...``: Label Studio tasks in, verified labels out.

``register(subparsers)`` adds the group to the ``qcloop`` parser. Settings come
from the ``[label_studio]`` section (``QCLOOP_LABEL_STUDIO__URL``, ``__TOKEN``, ...).
``python -m qcloop_labelling.cli`` runs the group on its own. Each command prints one
JSON line on stdout (its result); progress goes to stderr through ``logging``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qcloop.errors import QcloopError
from qcloop.logs import configure_logging
from qcloop.settings import Settings
from qcloop_labelling.client import LabelStudioClient, connect
from qcloop_labelling.project import ensure_project, find_project
from qcloop_labelling.settings import LabelStudioSettings, load_all


def _label_studio(args: argparse.Namespace, settings: Settings) -> LabelStudioSettings:
    return settings.label_studio


def _open(args: argparse.Namespace, settings: Settings) -> tuple[LabelStudioClient, int]:
    ls = _label_studio(args, settings)
    client = connect(ls)
    return client, find_project(client, ls.project_title)


def _print(payload: dict[str, Any]) -> None:
    """The command's result: one JSON line on stdout."""
    print(json.dumps(payload, default=str))


def cmd_bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    """Create or update the project (idempotent)."""
    ls = _label_studio(args, settings)
    client = connect(ls)
    storage: dict[str, object] = {}
    try:
        state = ensure_project(client, ls.project_title, list(settings.class_names))
        if ls.images == "s3":
            from qcloop_labelling.storage import ensure_s3_storage

            sid, action = ensure_s3_storage(client, state.id, settings.store, ls)
            storage = {"s3_storage": {"id": sid, "action": action}}
        if ls.ml_backend.url:  # the backend must be up: Label Studio calls it while saving
            from qcloop_labelling.ml_connect import ensure_ml_backend

            ml = ensure_ml_backend(client, state.id, ls.ml_backend)
            storage["ml_backend"] = asdict(ml)
    finally:
        client.close()
    _print(asdict(state) | {"url": f"{ls.url}/projects/{state.id}/"} | storage)
    return 0


def cmd_ml_backend(args: argparse.Namespace, settings: Settings) -> int:
    """Serve the production model to Label Studio until SIGTERM (or Ctrl-C)."""
    import signal
    import threading

    from qcloop_labelling.ml_backend import make_server

    if args.register and not settings.label_studio.ml_backend.url:
        raise QcloopError("--register needs label_studio.ml_backend.url: the URL Label Studio uses")
    server = make_server(settings, host=args.host, port=args.port).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.register:
        from qcloop_labelling.ml_connect import register_when_ready

        threading.Thread(target=register_when_ready, args=(settings, stop), daemon=True).start()
    stop.wait()
    version = server.model_version()
    server.stop()
    _print({"ml_backend": server.url, "stopped": True, "model_version": version})
    return 0


def cmd_sync_in(args: argparse.Namespace, settings: Settings) -> int:
    """Raw store -> tasks with pre-annotations."""
    from qcloop_labelling.jobs import sync_in_job

    report = sync_in_job(
        settings, batch_size=args.batch_size, include_labelled=args.include_labelled
    )
    _print({k: v for k, v in asdict(report).items() if k != "task_ids"})
    return 0


def cmd_sync_out(args: argparse.Namespace, settings: Settings) -> int:
    """Export -> YOLO folder."""
    from qcloop_labelling.sync_out import sync_out

    client, project = _open(args, settings)
    try:
        report = sync_out(settings, client, project, Path(args.out))
    finally:
        client.close()
    _print(
        {
            "out": str(report.out),
            "counts": report.counts,
            "boxes": report.boxes,
            "invalid": report.invalid_json(),
            "agreement": report.agreement.summary(),
            "export_sha256": report.export_sha256,
        }
    )
    return 0


def cmd_round(args: argparse.Namespace, settings: Settings) -> int:
    """Export -> YOLO folder -> new dataset version if anything is new."""
    from qcloop_labelling.jobs import round_job, sync_in_job

    synced: dict[str, Any] = {}
    if args.sync_in:  # one scheduled job: new images in, verified labels out
        report = sync_in_job(settings)
        synced = {"sync_in": {k: v for k, v in asdict(report).items() if k != "task_ids"}}
    result = round_job(settings)
    manifest = result.manifest
    _print(
        {
            "version": manifest.version if manifest else None,
            "created": result.created,
            "counts": result.export.counts,
            "invalid": result.export.invalid_json(),
            "agreement": result.export.agreement.summary(),
            "source": manifest.source if manifest and result.created else None,
        }
        | synced
    )
    return 0


def cmd_import_labels(args: argparse.Namespace, settings: Settings) -> int:
    """Existing labels (YOLO folder or Label Studio JSON) -> annotated tasks."""
    from qcloop_labelling.import_labels import import_coco, import_label_studio_json, import_yolo

    if args.format != "yolo" and not args.images:
        raise QcloopError(f"--format {args.format} needs --images DIR (where the images are)")
    client, project = _open(args, settings)
    try:
        if args.format == "yolo":
            report = import_yolo(settings, client, project, Path(args.source))
        elif args.format == "coco":
            report = import_coco(settings, client, project, Path(args.source), Path(args.images))
        else:
            report = import_label_studio_json(
                settings, client, project, Path(args.source), Path(args.images)
            )
    finally:
        client.close()
    _print(asdict(report))
    return 0


def _who(args: argparse.Namespace) -> str:
    import getpass

    try:
        return str(args.by or getpass.getuser())
    except (KeyError, OSError):  # no user name in a bare container
        raise QcloopError("give --by WHO: no user name to record the change under") from None


def _event_json(event: Any) -> dict[str, Any]:
    entry = event.entry
    return {
        "sha256": event.sha256,
        "file": entry.file if entry else None,
        "version": event.version,
        "reason": event.reason,
        "by": event.by,
        "at": event.at.isoformat(),
    }


def cmd_remove(args: argparse.Namespace, settings: Settings) -> int:
    """Images (or tasks' images) out of the next dataset versions."""
    from qcloop.removals import remove_images

    names = list(args.images)
    if args.task:
        client, _ = _open(args, settings)
        try:
            names += [_task_sha256(client, task) for task in args.task]
        finally:
            client.close()
    if not names:
        raise QcloopError("name the images to remove (file, sha256, ...) or give --task ID")
    events = remove_images(settings, names, reason=args.reason, by=_who(args))
    _print({"removed": [_event_json(e) for e in events]})
    return 0


def _task_sha256(client: LabelStudioClient, task_id: int) -> str:
    sha = (client.task(task_id).get("data") or {}).get("sha256")
    if not sha:
        raise QcloopError(f"task {task_id}: no sha256 in its data; name its image by file instead")
    return str(sha)


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    """Undo removals: the images come back in the next dataset version."""
    from qcloop.removals import restore_images

    events = restore_images(settings, list(args.images), reason=args.reason, by=_who(args))
    _print({"restored": [e.sha256 for e in events]})
    return 0


def cmd_removed(args: argparse.Namespace, settings: Settings) -> int:
    """The images out of the next versions now, and every removal and restore so far."""
    from qcloop.removals import removal_events, removal_state
    from qcloop.storage import open_store

    store = open_store(settings.store)
    state = removal_state(store)
    history = [_event_json(e) | {"action": e.action} for e in removal_events(store)]
    _print({"removed": [_event_json(e) for e in state.removed.values()], "history": history})
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``labelling`` command group to a ``qcloop`` sub-parsers object."""
    group = subparsers.add_parser(
        "labelling", help="Label Studio: tasks in, verified labels out", description=__doc__
    )
    actions = group.add_subparsers(dest="labelling_command", required=True, metavar="ACTION")

    def add(name: str, handler: Any, help_: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    add("bootstrap", cmd_bootstrap, "create or update the Label Studio project (idempotent)")
    p = add("sync-in", cmd_sync_in, "raw images -> tasks with pre-annotations, least sure first")
    p.add_argument("--batch-size", type=int, help="tasks per request (default: settings)")
    p.add_argument(
        "--include-labelled", action="store_true", help="also images in the current dataset"
    )
    add("sync-out", cmd_sync_out, "export verified labels as a YOLO folder").add_argument(
        "--out", required=True, help="new folder for images/, labels/, classes.txt"
    )
    add("round", cmd_round, "sync-out + new dataset version when anything is new").add_argument(
        "--sync-in", action="store_true", help="first send new raw images in (for schedules)"
    )
    p = add("import-labels", cmd_import_labels, "existing labels -> annotated tasks")
    p.add_argument("source", help="YOLO folder, Label Studio JSON export or COCO JSON file")
    p.add_argument("--format", choices=["yolo", "ls-json", "coco"], default="yolo")
    p.add_argument("--images", help="ls-json, coco: folder holding the images (found by name)")
    p = add("remove", cmd_remove, "take images out of the next dataset versions (undo: restore)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="file, file name, stem or sha256")
    p.add_argument("--task", type=int, action="append", help="a Label Studio task's image")
    p.add_argument("--reason", required=True, help="why: wrong part, duplicate, privacy, ...")
    p.add_argument("--by", help="who asks (default: your user name)")
    p = add("restore", cmd_restore, "undo a removal: the image is back in the next version")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="file, file name, stem or sha256")
    p.add_argument("--reason", required=True, help="why it comes back")
    p.add_argument("--by", help="who asks (default: your user name)")
    add("removed", cmd_removed, "images out of the next versions, and every removal and restore")
    p = add("ml-backend", cmd_ml_backend, "serve the production model to Label Studio (ML backend)")
    p.add_argument("--host", help="address to listen on (default: label_studio.ml_backend.host)")
    p.add_argument("--port", type=int, help="port (default: label_studio.ml_backend.port)")
    p.add_argument(
        "--register",
        action="store_true",
        help="connect itself to the project once it exists (label_studio.ml_backend.url)",
    )
    return group


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``labelling`` group on its own (before it is hooked into ``qcloop``)."""
    parser = argparse.ArgumentParser(prog="qcloop-labelling")
    parser.add_argument("--config", type=Path, help="settings TOML (default ./qcloop.toml)")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    configure_logging()
    try:
        settings, _ = load_all(args.config)
        return int(args.handler(args, settings))
    except QcloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
