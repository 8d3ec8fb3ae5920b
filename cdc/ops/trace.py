"""A POS row run through a connector's stages, with what each stage did to it, in words (for `cdc explain`).

    steps, result = trace_row(stages, ev)

`steps` is one entry per stage that ran: {"stage", "did"}; `result` is {"outcome": "row" | "filtered" |
"held", ...}: the storefront row the stages make, or which stage left the row out (a filter's expression and
the values it saw), or which rule held it and why (a guard's numbers are in its reason).
"""

from __future__ import annotations

from typing import Any

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent, jsonable
from cdc.stages import apply_stages, snapshot


def trace_row(stages: list, ev: ChangeEvent) -> tuple[list[dict], dict]:
    first = snapshot(ev)  # what the first stage sees
    trace: list[tuple[str, dict | None]] = []
    try:
        out = apply_stages(stages, ev, trace=trace)
    except HoldError as e:
        steps = _steps(first, trace)
        failed = e.rule or "?"
        steps.append({"stage": failed, "did": f"held it ({getattr(e, 'kind', 'dead_letter')}): {e.reason}"})
        return steps, {
            "outcome": "held",
            "stage": failed,
            "kind": getattr(e, "kind", "dead_letter"),
            "reason": e.reason,
            "details": jsonable(e.details),
        }
    steps = _steps(first, trace)
    if out is None:
        name = trace[-1][0]
        before = trace[-2][1] if len(trace) > 1 else first
        return steps, {"outcome": "filtered", "stage": name, "why": _why_filtered(stages, name, before)}
    return steps, {
        "outcome": "row",
        "op": out.op,
        "row": jsonable(out.row),
        "lane": out.lane,
        "schedule": _schedule(out),
        "event": out,
    }


def _steps(first: dict | None, trace: list) -> list[dict]:
    out, before = [], first
    for name, after in trace:
        out.append({"stage": name, "did": _diff(before, after)})
        before = after
    return out


def _diff(before: dict | None, after: dict | None) -> str:
    """What changed between two snapshots of a change, in words."""
    if after is None:
        return "left it out"
    if before is None:
        return "made it"
    parts = []
    if before["op"] != after["op"]:
        parts.append(f"made it a {_OPS.get(after['op'], after['op'])}")
    b, a = _image(before), _image(after)
    gone, new = [c for c in b if c not in a], [c for c in a if c not in b]
    renamed = [(g, n) for g, n in zip(gone, new, strict=False) if b[g] == a[n]]
    for g, n in renamed:
        parts.append(f"renamed {g} to {n}")
        gone.remove(g)
        new.remove(n)
    if gone:
        parts.append("dropped " + ", ".join(gone))
    for c in new:
        parts.append(f"set {c} = {_show(a[c])}")
    for c in a:
        if c in b and a[c] != b[c]:
            parts.append(f"{c}: {_show(b[c])} -> {_show(a[c])}")
    if before.get("key_columns") != after.get("key_columns"):
        parts.append("keyed it by " + ", ".join(after["key_columns"]))
    return "; ".join(parts) or "passed it on unchanged"


_OPS = {"c": "insert", "u": "update", "d": "delete", "r": "snapshot read"}


def _image(snap: dict) -> dict:
    return (snap["before"] if snap["op"] == "d" else snap["after"]) or {}


def _show(v: Any) -> str:
    return "(unchanged TOAST)" if v is UNCHANGED_TOAST or v == "__debezium_unavailable_value" else repr(v)


def _why_filtered(stages: list, name: str, before: dict | None) -> str:
    """A filter's (or pick's) expression and the values of the fields it reads, as the stage saw them."""
    stage = next((s for s in stages if s.name == name), None)
    expr = getattr(stage, "_expr", None) or getattr(stage, "expr", None)
    text = getattr(getattr(stage, "config", None), "where", None)
    row = _image(before) if before else {}
    fields = sorted(getattr(expr, "fields", ()) or ())
    seen = "; ".join(f"{f} = {_show(row.get(f))}" for f in fields if f in row)
    if text:
        return f"{text}; {seen}" if seen else text
    return f"{name} left it out"


def _schedule(ev: ChangeEvent) -> dict | None:
    s = ev.headers.get("schedule")
    if not s:
        return None
    return {"stage": s["stage"], "what": s["what"], "at": s["at"].isoformat()}
