"""The ``qcloop`` command line (platform side). ``qcloop --help`` lists the commands.

Every command reads settings from ``qcloop.toml`` / ``$QCLOOP_CONFIG`` and
``QCLOOP_*`` variables (see ``qcloop config``). Errors print one clear line
(``error: ...``) and exit 1; success exits 0. A command prints its result on stdout
and its progress, as log records, on stderr, so that ``qcloop eval ... > metrics.json``
keeps the JSON alone.

The commands come in groups, one module each: ``data`` (config, schemas, dataset, raw),
``training`` (train, eval, pipeline), ``models`` (model), ``fleet`` (release, keys,
broker, fleet, demo), and the labelling team's ``labelling`` (``qcloop_labelling.cli``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipelines.cli import data, fleet, models, training
from pipelines.cli.common import split_model_ref
from qcloop.errors import QcloopError
from qcloop.logs import configure_logging
from qcloop.settings import load_settings

__all__ = ["build_parser", "main", "split_model_ref"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one command, or group of actions, per step of the loop."""
    from qcloop_labelling.cli import register as register_labelling

    parser = argparse.ArgumentParser(prog="qcloop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="settings TOML (default ./qcloop.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.register(sub)
    training.register(sub)
    models.register(sub)
    fleet.register(sub)
    register_labelling(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qcloop``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        settings = load_settings(args.config)
        return int(args.handler(args, settings))
    except QcloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
