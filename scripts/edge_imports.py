"""Import every edge_agent module (not ``__main__``, which runs the CLI) and say which
numpy, onnxruntime, Pillow and TOML reader they run on: the edge install's smoke check on
another Python (scripts/check-edge-py310.sh, the GitHub job edge-py310)."""

from __future__ import annotations

import importlib
import pkgutil

import numpy
import onnxruntime
import PIL

import edge_agent
from qcloop import settings


def main() -> None:
    names = [
        m.name
        for m in pkgutil.walk_packages(edge_agent.__path__, "edge_agent.")
        if not m.name.endswith("__main__")
    ]
    for name in names:
        importlib.import_module(name)
    print(
        f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, pillow"
        f" {PIL.__version__}, TOML by {settings.tomllib.__name__}:"
        f" {len(names)} edge_agent modules import"
    )


if __name__ == "__main__":
    main()
