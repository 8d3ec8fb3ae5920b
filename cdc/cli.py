"""The `cdc` command: thin — parse, load config, call the library."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

import typer

from cdc.config import ConnectorConfig, load_config
from cdc.errors import CdcError, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="pos-cdc: keep the storefront's prices in step with the POS.",
)
state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks and debug logs")) -> None:
    state["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s thread=%(threadName)s logger=%(name)s %(message)s",
    )


def tune_gc() -> None:
    """A batch keeps tens of thousands of small objects alive (events, rows); the default collector
    thresholds rescan them over and over (~2 µs per change). Start-up objects are frozen out of the way and
    the young generation is collected less often; reference counting still frees almost everything."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_all(files: list[Path]) -> list[ConnectorConfig]:
    configs, problems = [], []
    for f in files:
        try:
            configs.append(load_config(f))
        except ConfigError as e:
            problems += e.problems
    names = [c.name for c in configs]
    for c in configs:
        if names.count(c.name) > 1:
            problems.append(f"{c.path}:1: name: connector name {c.name!r} is used by more than one file")
            break
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        raise typer.Exit(2)
    return configs


@app.command()
def validate(configs: list[Path] = typer.Argument(..., help="connector YAML files")) -> None:
    """Check config files without touching any database."""
    for c in load_all(configs):
        typer.echo(f"{c.path}: ok ({c.name}: {', '.join(c.source.tables)} -> {c.sink.table})")


@app.command()
def run(
    configs: list[Path] = typer.Argument(..., help="connector YAML files"),
    metrics_port: int | None = typer.Option(None, "--metrics-port", help="serve /metrics and /healthz"),
    resnapshot: bool = typer.Option(
        False, "--resnapshot", help="forget stored positions, recreate the slot and copy the tables anew"
    ),
) -> None:
    """Run the connectors until SIGINT/SIGTERM."""
    from cdc.metrics import Metrics
    from cdc.pipeline import Pipeline

    cfgs = load_all(configs)
    tune_gc()
    metrics = Metrics()
    port = metrics_port if metrics_port is not None else cfgs[0].metrics.port
    if port is not None:
        metrics.serve(port, cfgs[0].metrics.host)
    pipelines = [Pipeline(c, metrics) for c in cfgs]
    if resnapshot:
        for p in pipelines:
            p.reset()

    def on_signal(signum, _frame) -> None:
        logging.getLogger("cdc").info(
            "signal %s: stopping after the current batch", signal.Signals(signum).name
        )
        for p in pipelines:
            p.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    errors: list[BaseException] = []

    def guarded(p: Pipeline) -> None:
        try:
            p.run()
        except BaseException as e:  # noqa: BLE001 - reported below, one line each
            errors.append(e)
            for other in pipelines:
                other.stop()

    threads = [threading.Thread(target=guarded, args=(p,), name=p.cfg.name) for p in pipelines]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(0.2)
    if errors:
        if state["debug"]:
            raise errors[0]
        for e in errors:
            typer.echo(
                f"error: {e}" if isinstance(e, CdcError) else f"error: {type(e).__name__}: {e}", err=True
            )
        raise typer.Exit(1)


@app.command()
def status(
    config: Path = typer.Argument(..., help="connector YAML file"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Position, lag (bytes and seconds), retained WAL, last commit time, held changes, pending scheduled
    prices and the next one's due time, state."""
    import json

    from rich.console import Console
    from rich.table import Table

    from cdc.status import gather

    (cfg,) = load_all([config])
    info = gather(cfg)
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return
    table = Table(title=f"pos-cdc status: {cfg.name}", show_header=False)
    for k, v in info.items():
        table.add_row(k, json.dumps(v, default=str) if isinstance(v, dict) else str(v))
    Console().print(table)


def _held_command(
    config: Path,
    action: str,
    entry: int | None,
    as_json: bool,
    by: str | None,
    kind: str,
    apply_word: str,
    drop_word: str,
) -> None:
    import json

    from rich.console import Console
    from rich.table import Table

    from cdc.held import list_held, resolve

    (cfg,) = load_all([config])
    if action == "list":
        rows = list_held(cfg, kind)
        if as_json:
            typer.echo(json.dumps(rows, default=str))
            return
        table = Table(title=f"{kind.replace('_', ' ')}: {cfg.name}")
        for col in ("id", "key", "source", "position", "rule", "reason", "held at"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r["id"]),
                str(r["row_key"]),
                r["source_table"],
                f"{r['commit_lsn']}#{r['seq']}",
                r["rule"] or "",
                r["reason"],
                str(r["held_at"]),
            )
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
) -> None:
    """Changes held by a guard: list, approve (apply unless a newer change landed since), reject."""
    _held_command(config, action, entry, as_json, by, "quarantine", "approve", "reject")


@app.command()
def deadletter(
    config: Path = typer.Argument(..., help="connector YAML file"),
    action: str = typer.Argument(..., help="list | retry | drop"),
    entry: int | None = typer.Argument(None, help="entry id (retry, drop)"),
    as_json: bool = typer.Option(False, "--json"),
    by: str | None = typer.Option(None, "--by", help="who decides (default: the OS user)"),
) -> None:
    """Changes the pipeline or the storefront refused: list, retry (after fixing the cause), drop."""
    _held_command(config, action, entry, as_json, by, "dead_letter", "retry", "drop")


@app.command()
def demo(
    seconds: float = typer.Option(0, help="stop after this many seconds (0: until Ctrl-C)"),
    rate: float = typer.Option(20, help="simulated price changes per second"),
) -> None:
    """The embedded default: a local POS PostgreSQL, a local storefront, simulated price changes, live lag."""
    from cdc.demo import run_demo

    run_demo(seconds=seconds, rate=rate)


def main() -> None:
    try:
        app()
    except CdcError as e:
        if state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
