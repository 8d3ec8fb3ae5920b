"""How the operator tools' reports read on a terminal (their --json is the same data as one document)."""

from __future__ import annotations


def print_explanation(info: dict) -> None:
    from rich.console import Console

    out = Console(highlight=False)
    out.print(f"[bold]{info['connector']}[/], key [bold]{info['key']}[/]")
    pos = info.get("pos") or {}
    if pos.get("error"):
        out.print(f"POS: {pos['error']}")
    for r in pos.get("rows", []):
        out.print(f"POS row in {r['table']}: {r['row']}")
        for step in r["stages"]:
            out.print(f"  {step['stage']}: {step['did']}")
        res = r["result"]
        if res["outcome"] == "row":
            lane = f" (lane {res['lane']})" if res.get("lane") else ""
            out.print(f"  -> storefront {('delete' if res['op'] == 'd' else 'row')}{lane}: {res['row']}")
            if res.get("schedule"):
                s = res["schedule"]
                out.print(f"  -> the promotion {s['what']}s at {s['at']} ({s['stage']})")
        elif res["outcome"] == "filtered":
            out.print(f"  -> filtered out by {res['stage']}: {res['why']}")
        else:
            out.print(f"  -> held by {res['stage']} ({res['kind']}): {res['reason']}")
    for t in pos.get("not_in_publication", []):
        out.print(f"table {t} is not in publication {pos['publication']}")
    store = info.get("storefront") or {}
    row = store.get("row")
    out.print(
        f"storefront row: {row if row is not None else '(none)'}"
        + (" (soft-deleted)" if store.get("deleted") else "")
    )
    last = store.get("last_applied")
    if last:
        out.print(
            f"  last change applied: {last['op']} at POS {last['position']}, committed {last['commit_time']}, "
            f"applied {last['applied_at']}, via {last['via']}"
        )
    for h in info.get("held", []):
        decided = (
            f", {h['status']} by {h['resolved_by']} at {h['resolved_at']}" if h["status"] != "held" else ""
        )
        line = f"{h['kind'].replace('_', ' ')} {h['id']} ({h['status']}{decided}): {h['reason']}"
        out.print(f"{line} [{h['rule']}, POS {h['position']}]", markup=False)  # the rule in brackets, as text
    if info.get("scheduled"):
        s = info["scheduled"]
        out.print(f"scheduled: the promotion {s['what']}s at {s['due']} ({s['stage']})")
    state = info.get("connector_state") or {}
    if state:
        out.print(
            f"connector: {state.get('state')}, last commit {state.get('last_commit_time')}, "
            f"behind {state.get('lag_seconds')} s"
        )
    out.print(f"[bold]verdict:[/] {info['verdict']}")
