"""Helpers of the metrics tests: scrape a real ``/metrics`` and read samples from it."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url`` (the Prometheus text format), by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels`` (0 if none)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name} {labels}: {found}"
    return found[0] if found else 0.0


def labels_of(samples: Samples, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name``."""
    return [dict(ls) for (n, ls) in samples if n == name]
