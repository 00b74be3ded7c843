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


PRODUCT = ("qcloop", "components", "edge_agent", "pipelines", "label_studio/qcloop_labelling")
# a module of the product does one job: about 400 lines at most
MAX_LINES = 400
# command-line modules print their result on stdout; everything else logs
CLI_MODULES = {"cli.py", "demo.py"}


def _product_modules() -> list[Path]:
    return sorted(path for folder in PRODUCT for path in (ROOT / folder).rglob("*.py"))


def test_the_product_never_imports_research_or_scripts() -> None:
    wrong = {
        str(path.relative_to(ROOT))
        for path in _product_modules()
        if _imported_packages(path) & {"benchmarks", "scripts", "tests"}
    }
    assert not wrong, wrong


def test_product_modules_stay_small() -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in _product_modules()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by job: {long}"


def test_only_command_line_modules_print() -> None:
    printing = set()
    for path in _product_modules():
        if path.name in CLI_MODULES or path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.add(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not printing, f"log instead: {sorted(printing)}"
