"""`cdc quarantine`, `cdc deadletter`: the changes held back, and the decisions on them."""

from __future__ import annotations

from pathlib import Path

import typer

from cdc.cli import app, fail, load_all


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

    from rich.console import Console
    from rich.table import Table

    from cdc.ops.held import list_held, resolve

    (cfg,) = load_all([config])
    if action == "list":
        rows = list_held(cfg, kind, status=None if show_all else "held", key=key)
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table(title=f"{kind.replace('_', ' ')}: {cfg.name}" + (" (all)" if show_all else ""))
        cols = ["id", "key", "source", "position", "rule", "reason", "held at"]
        if show_all:
            cols += ["status", "decided by", "decided at"]
        for col in cols:
            table.add_column(col)
        for r in rows:
            cells = [
                str(r["id"]),
                str(r["row_key"]),
                r["source_table"],
                r["position"],
                r["rule"] or "",
                r["reason"],
                str(r["held_at"]),
            ]
            if show_all:
                cells += [r["status"], r.get("resolved_by") or "", str(r.get("resolved_at") or "")]
            table.add_row(*cells)
        Console().print(table)
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
    by: str | None = typer.Option(None, "--by", help="who decides (default: the OS user)"),
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
