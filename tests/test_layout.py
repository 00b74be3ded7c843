"""The three floors of ARCHITECTURE.md: arrows point down only (pipelines -> rooms -> core)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {  # package -> (folder, packages it must never import)
    "qcloop": ("qcloop", {"components", "edge_agent", "qcloop_labelling", "pipelines"}),
    "components": ("components", {"edge_agent", "qcloop_labelling", "pipelines"}),
    "edge_agent": ("edge_agent", {"components", "qcloop_labelling", "pipelines"}),
    "qcloop_labelling": (
        "label_studio/qcloop_labelling",
        {"components", "edge_agent", "pipelines"},
    ),
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_no_import_points_up_or_sideways(package: str) -> None:
    folder, forbidden = FLOORS[package]
    wrong = {
        f"{path.relative_to(ROOT)} imports {sorted(_imported_packages(path) & forbidden)}"
        for path in (ROOT / folder).rglob("*.py")
        if _imported_packages(path) & forbidden
    }
    assert not wrong, wrong


def test_label_studio_folder_is_not_a_package() -> None:
    # an importable `label_studio` would shadow Label Studio's own package
    assert not (ROOT / "label_studio" / "__init__.py").exists()
