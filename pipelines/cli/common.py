"""What every command group of the ``qcloop`` CLI shares: the handler type and ``add``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from qcloop.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], int]
# argparse's sub-parser collection: what ``add_subparsers`` returns
SubParsers = Any


def add(sub: SubParsers, name: str, handler: Handler | None, help_: str) -> argparse.ArgumentParser:
    """A command ``name`` under ``sub`` that runs ``handler`` (None: a group of actions)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_, description=help_)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def group(sub: SubParsers, name: str, help_: str) -> SubParsers:
    """A command group ``name`` (``qcloop NAME ACTION``) whose actions are added to the result."""
    return add(sub, name, None, help_).add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION"
    )


def split_model_ref(ref: str, default_name: str) -> tuple[str, str]:
    """``NAME@ALIAS``, ``NAME/VERSION``, ``@ALIAS``, ``ALIAS`` or ``VERSION`` -> (name, ref)."""
    if "@" in ref.lstrip("@"):
        name, alias = ref.split("@", 1)
        return name, "@" + alias
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version
    return default_name, ref
