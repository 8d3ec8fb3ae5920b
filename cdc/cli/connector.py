"""`cdc validate`, `cdc run`, `cdc status`, `cdc demo`: a connector's life."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from cdc import hotpath
from cdc.cli import app, describe, fail, load_all, state, tune_gc, tune_threads
from cdc.errors import CdcError
from cdc.secrets import redact


@app.command()
def validate(
    configs: list[Path] = typer.Argument(..., help="connector YAML files"),
    check_source: bool = typer.Option(
        False,
        "--check-source",
        help="also ask the POS and the storefront (tables, the stages' fields, column types); creates nothing",
    ),
) -> None:
    """Check config files without touching any database (with --check-source: against the databases too)."""
    from cdc.lanes import lane_connectors

    problems = 0
    for c in load_all(configs):
        if check_source:
            from cdc.ops.check import check_source as check

            found = check(c)
            for p in found:
                typer.echo(redact(f"{c.path}: {p}"), err=True)
            problems += len(found)
            if found:
                continue
        typer.echo(
            redact(f"{c.path}: ok ({c.name}: {describe(c)})")
            + (", checked against the databases" if check_source else "")
        )
        lanes = lane_connectors(c)
        for lc in lanes if len(lanes) > 1 else []:
            typer.echo(f"  lane {lc.name} (slot {lc.slot}): rows where {lc.source.row_filter}")
        if len(lanes) > 1:
            typer.echo(
                "  every row is in exactly one lane; the publications: cdc setup-source " + str(c.path)
            )
    if problems:
        raise typer.Exit(2)


@app.command()
def run(
    configs: list[Path] = typer.Argument(..., help="connector YAML files"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="serve /metrics and /healthz"),
    resnapshot: bool = typer.Option(
        False, "--resnapshot", help="forget stored positions, recreate the slot and copy the tables anew"
    ),
    lane: str | None = typer.Option(
        None,
        "--lane",
        help="run only this lane of the configs' source.lanes (each lane in a process of its own)",
    ),
    retry_for: float = typer.Option(
        900.0, "--retry-for", help="seconds to keep retrying a database or broker that is away, then stop"
    ),
) -> None:
    """Run the connectors until SIGINT/SIGTERM (a config with source.lanes runs a connector per lane)."""
    from cdc.lanes import lane_connectors, lane_of
    from cdc.metrics import Metrics
    from cdc.pipeline import Pipeline

    cfgs = load_all(configs)
    try:
        connectors = (
            [lane_of(c, lane) for c in cfgs] if lane else [x for c in cfgs for x in lane_connectors(c)]
        )
    except ValueError as e:
        fail(str(e), 2)
    tune_gc()
    tune_threads()
    # which hot modules run compiled: one line in the log (and cdc_hot_path_info, per connector)
    hot = hotpath.state()
    logging.getLogger("cdc.hotpath").log(
        logging.WARNING if hot.stale else logging.INFO, "hot path: %s", hotpath.summary(hot)
    )
    metrics = Metrics()
    port = metrics_port if metrics_port is not None else cfgs[0].metrics.port
    if port is not None:
        metrics.serve(port, cfgs[0].metrics.host)
    pipelines = [Pipeline(c, metrics, retry_for_s=retry_for) for c in connectors]
    if resnapshot:
        for p in pipelines:
            p.reset()

    from cdc.ops.daily import DailyReconcile
    from cdc.supervise import run_side_by_side

    # one daily comparison per config (all its lanes at once), run beside the lanes of a config run whole
    dailies = [DailyReconcile(c, metrics) for c in cfgs if c.reconcile is not None and not lane]
    errors = run_side_by_side(pipelines, dailies)
    if errors:
        if state["debug"]:
            raise errors[0]
        for e in errors:
            typer.echo(
                redact(f"error: {e}" if isinstance(e, CdcError) else f"error: {type(e).__name__}: {e}"),
                err=True,
            )
        raise typer.Exit(1)


@app.command()
def status(
    config: Path = typer.Argument(..., help="connector YAML file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Position, lag (bytes and seconds), retained WAL, last commit time, held changes, pending scheduled
    prices and the next one's due time, state, and whether this install's hot modules are compiled."""
    import json

    from rich.console import Console
    from rich.table import Table

    from cdc.lanes import lane_connectors
    from cdc.ops.status import gather

    (cfg,) = load_all([config])
    infos = [gather(c) for c in lane_connectors(cfg)]  # a config with lanes: each lane's connector
    if as_json:
        typer.echo(redact(json.dumps(infos[0] if len(infos) == 1 else infos, default=str)))
        return
    for info in infos:
        table = Table(title=f"pos-cdc status: {info['connector']}", show_header=False)
        for k, v in info.items():
            table.add_row(k, redact(_readable(v)))
        Console().print(table)


def _readable(value) -> str:
    """A status value as a person reads it: nested values as `key value` pairs, nothing as "-"."""
    if value is None or value == {}:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@app.command()
def demo(
    seconds: float = typer.Option(0, help="stop after this many seconds (0: until Ctrl-C)"),
    rate: float = typer.Option(20, help="simulated price changes per second"),
    kafka: bool = typer.Option(False, "--kafka", help="over a local Apache Kafka broker (two connectors)"),
) -> None:
    """The embedded default: a local POS PostgreSQL, a local storefront, simulated price changes, live lag."""
    from cdc.demo import run_demo

    run_demo(seconds=seconds, rate=rate, kafka=kafka)
