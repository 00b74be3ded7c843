"""The fleet as people see it: every device's retained state as a table.

Reading and checking the states is ``qcloop.devices``; this module lays them out for
``qcloop fleet``.
"""

from __future__ import annotations

from typing import Any

from qcloop.devices import STATE_FILTER, fleet_states, read_state

__all__ = ["STATE_FILTER", "fleet_states", "fleet_table", "read_state"]


def fleet_table(states: list[dict[str, Any]]) -> str:
    """A fixed-width table for people; unreadable states are explained below it."""
    rows = [("DEVICE", "FLEET", "STATUS", "MODEL", "SINCE", "FPS", "P50 MS", "SPOOL")]
    for s in states:
        model = s.get("model") or {}
        version = f"{model.get('name')}:{model.get('version')}" if model else "-"
        p50 = s.get("latency_p50_ms")
        rows.append(
            (
                s["device_id"],
                str(s.get("fleet", "-")),
                str(s.get("status", "-")),
                version,
                str(s.get("since", "-"))[:19],
                f"{float(s.get('fps') or 0):.1f}",
                "-" if p50 is None else f"{float(p50):.1f}",
                str(s.get("spool_depth", "-")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    notes = [f"{s['device_id']}: unreadable state: {s['error']}" for s in states if "error" in s]
    return "\n".join(lines + (["", *notes] if notes else []))
