"""The `cdc` command: thin — parse, load config, call the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

from cdc.config import ConnectorConfig, load_config
from cdc.errors import CdcError, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help: Typer's rich help shows every flag as taking a value (`--json <bool>`); these take none
    rich_markup_mode=None,
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
    # kafka-python narrates every connection and rebalance at INFO, and a topic not created yet, a coordinator
    # moving or a retried send as errors and warnings; pos-cdc says what matters itself (and retries)
    logging.getLogger("kafka").setLevel(logging.DEBUG if debug else logging.WARNING)
    for noisy in ("kafka.cluster", "kafka.coordinator", "kafka.producer.sender", "kafka.librdkafka"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.CRITICAL)


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
    from cdc.lanes import lane_connectors

    for c in load_all(configs):
        typer.echo(f"{c.path}: ok ({c.name}: {describe(c)})")
        lanes = lane_connectors(c)
        for lc in lanes if len(lanes) > 1 else []:
            typer.echo(f"  lane {lc.name} (slot {lc.slot}): rows where {lc.source.row_filter}")
        if len(lanes) > 1:
            typer.echo(
                "  every row is in exactly one lane; the publications: cdc setup-source " + str(c.path)
            )


@app.command("setup-source")
def setup_source(config: Path = typer.Argument(..., help="connector YAML file")) -> None:
    """Print the SQL a DBA runs on the POS for the connector's publication(s) (a lane's with its row filter)."""
    from cdc.lanes import publication_sql

    (cfg,) = load_all([config])
    if cfg.source.type != "postgres":
        fail(f"{config}: the source is Kafka; there is nothing to set up on the POS", 2)
    for line in publication_sql(cfg):
        typer.echo(line)


def describe(c: ConnectorConfig) -> str:
    """Where a connector reads and writes, in one line."""
    src, snk = c.source, c.sink
    read = (
        ", ".join(src.tables)
        if src.type == "postgres"
        else f"Kafka {src.topic_pattern or ', '.join(src.topics)}"
    )
    write = snk.table if snk.type == "sql" else f"Kafka {snk.topic_prefix}.<schema>.<table>"
    return f"{read} -> {write}"


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

    from cdc.lanes import lane_connectors
    from cdc.ops.status import gather

    (cfg,) = load_all([config])
    infos = [gather(c) for c in lane_connectors(cfg)]  # a config with lanes: each lane's connector
    if as_json:
        typer.echo(json.dumps(infos[0] if len(infos) == 1 else infos, default=str))
        return
    for info in infos:
        table = Table(title=f"pos-cdc status: {info['connector']}", show_header=False)
        for k, v in info.items():
            table.add_row(k, json.dumps(v, default=str) if isinstance(v, dict) else str(v))
        Console().print(table)


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


@app.command()
def demo(
    seconds: float = typer.Option(0, help="stop after this many seconds (0: until Ctrl-C)"),
    rate: float = typer.Option(20, help="simulated price changes per second"),
    kafka: bool = typer.Option(False, "--kafka", help="over a local Apache Kafka broker (two connectors)"),
) -> None:
    """The embedded default: a local POS PostgreSQL, a local storefront, simulated price changes, live lag."""
    from cdc.demo import run_demo

    run_demo(seconds=seconds, rate=rate, kafka=kafka)


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
