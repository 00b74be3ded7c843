"""One version: ``qcloop.__version__``; the package metadata and the Helm chart follow it.

pyproject.toml reads it (setuptools' dynamic version). Helm cannot read Python, so the
chart's ``appVersion`` and its default platform image tag are written out, and checked
here to be the same. The chart's own ``version`` is the chart's release number (Helm's
convention) and may move on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

import qcloop

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qcloop"


def test_pyproject_takes_the_version_from_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "qcloop.__version__"}


def test_chart_app_version_and_image_tag_are_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert str(chart["appVersion"]) == qcloop.__version__
    assert str(values["platform"]["image"]["tag"]) == qcloop.__version__
