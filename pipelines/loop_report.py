"""The loop report: per round, what was learnt from which images and how the model changed.

One row a round: the dataset version and its parent, the images labelled (and how many
of the new images were the edge's feedback), the model trained on it with mAP50-95 and
its interval, the gate's decision and reason, the model in production afterwards, what
the edge served, and what it sent back, by reason and by the model that judged it.
Written as Markdown (for a repository or a ticket) and as a small standalone HTML page.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = (
    ("round", "round"),
    ("dataset", "dataset version (parent)"),
    ("labelled", "images labelled (new from feedback)"),
    ("model", "model trained"),
    ("map", "mAP50-95 (95% interval)"),
    ("gate", "gate"),
    ("production", "production after"),
    ("served", "edge served"),
    ("feedback", "feedback images (by model)"),
)


def _cells(row: dict[str, Any]) -> dict[str, str]:
    """A round of ``demo-summary.json``'s ``rounds`` as the report's text cells."""
    metrics = row.get("metrics") or {}
    low, high = metrics.get("map50_95_low"), metrics.get("map50_95_high")
    score = f"{metrics['map50_95']:.3f}" if "map50_95" in metrics else "-"
    if low is not None and high is not None:
        score += f" ({low:.3f}..{high:.3f})"
    by_model = row.get("feedback_by_model") or {}
    models = ", ".join(f"v{v}: {n}" for v, n in sorted(by_model.items()))
    parent = row.get("parent_version")
    return {
        "round": str(row["round"]),
        "dataset": f"{row['dataset_version']} ({parent or 'none'})",
        "labelled": f"{row['images_labelled']} ({row.get('new_images_from_feedback', 0)})",
        "model": f"v{row['model_version']}" if row.get("model_version") else "not registered",
        "map": score,
        "gate": ("passed" if row.get("gate_passed") else "refused"),
        "production": f"v{row['production_version']}" if row.get("production_version") else "-",
        "served": f"v{row['serving_model_version']}" if row.get("serving_model_version") else "-",
        "feedback": f"{row.get('feedback_images', 0)}" + (f" ({models})" if models else ""),
    }


def markdown(rounds: Sequence[dict[str, Any]], title: str = "qcloop loop report") -> str:
    """The report as Markdown: the table, then each round's gate reason in full."""
    lines = [f"# {title}", ""]
    lines.append("| " + " | ".join(name for _, name in COLUMNS) + " |")
    lines.append("|" + " --- |" * len(COLUMNS))
    for row in rounds:
        cells = _cells(row)
        lines.append("| " + " | ".join(cells[key] for key, _ in COLUMNS) + " |")
    lines += ["", "## Gate reasons", ""]
    lines += [f"- round {row['round']}: {row.get('gate_reason', '-')}" for row in rounds]
    return "\n".join(lines) + "\n"


def html_page(rounds: Sequence[dict[str, Any]], title: str = "qcloop loop report") -> str:
    """The report as one standalone HTML page (no scripts, no outside resources)."""
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in COLUMNS)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(_cells(row)[key])}</td>" for key, _ in COLUMNS)
        + "</tr>"
        for row in rounds
    )
    reasons = "".join(
        f"<li>round {row['round']}: {html.escape(str(row.get('gate_reason', '-')))}</li>"
        for row in rounds
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:left}th{background:#eee}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<table><tr>{head}</tr>{body}</table><h2>Gate reasons</h2><ul>{reasons}</ul>"
        "</body></html>\n"
    )


def write_reports(rounds: Sequence[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    """``<stem>.md`` and ``<stem>.html``; their paths."""
    md, page = stem.with_suffix(".md"), stem.with_suffix(".html")
    md.write_text(markdown(rounds))
    page.write_text(html_page(rounds))
    return md, page
