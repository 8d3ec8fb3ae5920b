"""`cdc explain`, `cdc reconcile`, `cdc replay`: what an operator runs beside the stream."""

from __future__ import annotations

from pathlib import Path

import typer

from cdc.cli import app, fail, load_all
from cdc.errors import CdcError


@app.command()
def explain(
    config: Path = typer.Argument(..., help="connector YAML file"),
    key: str = typer.Argument(..., help="the storefront key (several key columns: a,b)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Why the storefront holds what it holds for one key: the POS rows and what each stage did, the
    storefront row and its last change, held entries, scheduled prices, the connector; then a verdict.
    Exit 0 in sync, 1 out of sync (the verdict says why), 2 cannot tell."""
    import json

    from cdc.ops.explain import explain as do_explain
    from cdc.ops.render import print_explanation

    (cfg,) = load_all([config])
    info = do_explain(cfg, key)
    if as_json:
        typer.echo(json.dumps(info, default=str))
    else:
        print_explanation(info)
    raise typer.Exit(info["exit_code"])


@app.command()
def reconcile(
    config: Path = typer.Argument(..., help="connector YAML file"),
    repair: bool = typer.Option(
        False, "--repair", help="fix the drift through the sink (never a held change)"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout, every key found"),
    examples: int = typer.Option(10, "--examples", help="keys shown per kind (readable output)"),
) -> None:
    """Compares every POS row, after the stages, with the storefront table, key by key: missing, extra and
    different keys (held, filtered and scheduled ones apart). With --repair, fixes the drift through the
    normal sink path from a consistent POS snapshot, while the connector may run.
    Exit 0 in sync (or repaired), 1 drift found and left, 2 cannot compare."""
    import json

    from cdc.ops.reconcile import reconcile as do_reconcile

    (cfg,) = load_all([config])
    report = do_reconcile(cfg, repair=repair, examples=examples)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), default=str))
    else:
        typer.echo(report.summary(), err=report.exit_code == 2)
    raise typer.Exit(report.exit_code)


@app.command()
def replay(
    config: Path = typer.Argument(..., help="connector YAML file (one that reads Kafka)"),
    to_earliest: bool = typer.Option(False, "--to-earliest", help="from the oldest record Kafka still has"),
    to_latest: bool = typer.Option(False, "--to-latest", help="skip to the end: nothing is replayed"),
    to_offset: str | None = typer.Option(
        None, "--to-offset", help="TOPIC:PARTITION:OFFSET,... (others unchanged)"
    ),
    to_datetime: str | None = typer.Option(
        None, "--to-datetime", help="from the first record at or after an ISO time"
    ),
    by_duration: str | None = typer.Option(
        None, "--by-duration", help="from an ISO 8601 duration ago, e.g. PT2H"
    ),
    shift_by: int | None = typer.Option(
        None, "--shift-by", help="move each partition by N (negative: rewind)"
    ),
    execute: bool = typer.Option(False, "--execute", help="apply the plan (default: print it only)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Rewind a Kafka-sourced connector (kafka-consumer-groups --reset-offsets semantics): prints the plan; with
    --execute applies it to the stored positions and the group, refused while the connector runs."""
    import json

    from rich.console import Console
    from rich.table import Table

    from cdc.ops.replay import parse_datetime, parse_duration, parse_offsets
    from cdc.ops.replay import replay as do_replay

    chosen = [
        (name, value)
        for name, value in (
            ("earliest", to_earliest or None),
            ("latest", to_latest or None),
            ("offset", to_offset),
            ("datetime", to_datetime),
            ("duration", by_duration),
            ("shift", shift_by),
        )
        if value is not None
    ]
    if len(chosen) != 1:
        fail(
            "give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime, --by-duration, --shift-by",
            2,
        )
    how, value = chosen[0]
    arg = {"offset": parse_offsets, "datetime": parse_datetime, "duration": parse_duration}.get(
        how, lambda v: v
    )(value)
    (cfg,) = load_all([config])
    try:
        moves, applied = do_replay(cfg, how, arg, execute)
    except CdcError as e:
        fail(str(e), 1)
    if as_json:
        typer.echo(
            json.dumps(
                {"connector": cfg.name, "executed": applied, "partitions": [m.as_dict() for m in moves]}
            )
        )
        return
    title = "replay applied" if applied else "replay plan (dry run; --execute applies it)"
    table = Table(title=f"{title}: {cfg.name}, group {cfg.source.group}")
    for col in ("topic", "partition", "current", "new", "records to replay"):
        table.add_column(col)
    for m in moves:
        d = m.as_dict()
        again = str(d["records_to_replay"]) if d["records_to_replay"] else f"skips {d['records_skipped']}"
        table.add_row(
            m.topic, str(m.partition), "-" if m.current is None else str(m.current), str(m.new), again
        )
    Console().print(table)
