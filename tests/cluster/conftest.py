"""The chart's helm fixtures, for the pod harness."""

from tests.charts.conftest import helm, helm_path

__all__ = ["helm", "helm_path"]
