"""The `cdc` command: thin — parse, load config, call the library. This module holds the app and what every
command shares; the commands live beside it by job: `connector.py` (validate, run, status, demo), `ops.py`
(explain, reconcile, replay), `held.py` (quarantine, dead letters), `admin.py` (what a DBA sets up)."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import typer

from cdc.config import ConnectorConfig, load_config
from cdc.errors import CdcError, ConfigError
from cdc.secrets import install_log_redaction, redact

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
    install_log_redaction()  # no log line shows a password (cdc/secrets.py)


def tune_gc() -> None:
    """A batch keeps tens of thousands of small objects alive (events, rows); the default collector
    thresholds rescan them over and over (~2 µs per change). Start-up objects are frozen out of the way and
    the young generation is collected less often; reference counting still frees almost everything."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


SWITCH_INTERVAL_S = 0.0005


def tune_threads() -> None:
    """A sink's writer thread waits for the storefront with the GIL released and needs it back the moment the
    reply is in, while the main thread decodes and encodes the next changes; Python lets a waiting thread ask
    the running one to let go only after the switch interval, 5 ms by default, and the storefront idles
    meanwhile. With the fast path's STEP (the main thread lets go between encoder calls) and write_async's
    wait for a MariaDB write's first statement, the gap between 20k-row writes to MariaDB went from 10-15 ms to
    ~4 ms (bench/mariadb_sink.py). A thread switch costs a few µs, at most one per interval."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def fail(message: str, code: int = 1) -> None:
    typer.echo(redact(f"error: {message}"), err=True)
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
            typer.echo(redact(p), err=True)
        raise typer.Exit(2)
    return configs


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


def main() -> None:
    try:
        app()
    except CdcError as e:
        if state["debug"]:
            raise
        typer.echo(redact(f"error: {e}"), err=True)
        sys.exit(1)


# the commands register themselves on `app`, in the order `cdc --help` lists them
for _module in ("connector", "ops", "held", "admin"):
    importlib.import_module(f"cdc.cli.{_module}")
