"""`cdc quarantine`, `cdc deadletter`: the changes held back, and the decisions on them."""

from __future__ import annotations

from pathlib import Path

import typer

from cdc.cli import app, fail, load_all


def render_entries(rows: list[dict], title: str) -> str:
    """Held entries as a person reads them, whatever the terminal's width: one line of facts per entry (id,
    key, table, position as PostgreSQL spells it, when, with its zone), then the rule and the whole reason."""
    from cdc.ops.held import aware

    def when(t) -> str:
        if t is None or isinstance(t, str):
            return t or "-"
        return aware(t).isoformat(sep=" ", timespec="seconds")

    out = [f"{title}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}"]
    for r in rows:
        facts = f"#{r['id']}  key {r['row_key']}  {r.get('source_table', '-')}  at {r['position']}"
        facts += f"  held {when(r.get('held_at'))}"
        if r.get("status", "held") != "held":
            facts += f"  {r['status']}"
        if r.get("resolved_by") or r.get("resolved_at"):
            facts += f" by {r.get('resolved_by') or '-'} {when(r.get('resolved_at'))}"
        out += ["", facts, f"    rule {r.get('rule') or '-'}: {r['reason']}"]
    return "\n".join(out)


def _held_command(
    config: Path,
    action: str,
    entry: int | None,
    as_json: bool,
    by: str | None,
    kind: str,
    apply_word: str,
    drop_word: str,
    key: str | None = None,
    show_all: bool = False,
) -> None:
    import json

    from cdc.ops.held import list_held, resolve

    (cfg,) = load_all([config])
    if action == "list":
        rows = list_held(cfg, kind, status=None if show_all else "held", key=key)
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        title = f"{kind.replace('_', ' ')}: {cfg.name}" + (" (all)" if show_all else "")
        typer.echo(render_entries(rows, title))
        return
    if action not in (apply_word, drop_word) or entry is None:
        fail(f"usage: cdc {kind.replace('_', '')} CONFIG list | {apply_word} ID | {drop_word} ID", 2)
    outcome = resolve(cfg, entry, kind, apply=action == apply_word, by=by)
    if as_json:
        typer.echo(json.dumps({"id": entry, "status": outcome.status, "message": outcome.message}))
    else:
        typer.echo(f"entry {entry}: {outcome.status}: {outcome.message}")


@app.command()
def quarantine(
    config: Path = typer.Argument(..., help="connector YAML file"),
    action: str = typer.Argument(..., help="list | approve | reject"),
    entry: int | None = typer.Argument(None, help="entry id (approve, reject)"),
    as_json: bool = typer.Option(False, "--json"),
    by: str | None = typer.Option(
        None,
        "--by",
        help="who decides (default: the OS user); a guard with approvers accepts only them",
    ),
    key: str | None = typer.Option(None, "--key", help="list: only this storefront key"),
    show_all: bool = typer.Option(False, "--all", help="list: decided entries too (approved, rejected, ...)"),
) -> None:
    """Changes held by a guard: list, approve (apply unless a newer change landed since), reject."""
    _held_command(config, action, entry, as_json, by, "quarantine", "approve", "reject", key, show_all)


@app.command()
def deadletter(
    config: Path = typer.Argument(..., help="connector YAML file"),
    action: str = typer.Argument(..., help="list | retry | drop"),
    entry: int | None = typer.Argument(None, help="entry id (retry, drop)"),
    as_json: bool = typer.Option(False, "--json"),
    by: str | None = typer.Option(None, "--by", help="who decides (default: the OS user)"),
    key: str | None = typer.Option(None, "--key", help="list: only this storefront key"),
    show_all: bool = typer.Option(False, "--all", help="list: decided entries too (retried, dropped, ...)"),
) -> None:
    """Changes the pipeline or the storefront refused: list, retry (after fixing the cause), drop."""
    _held_command(config, action, entry, as_json, by, "dead_letter", "retry", "drop", key, show_all)
