"""`cdc setup-source`: what a DBA sets up for pos-cdc."""

from __future__ import annotations

from pathlib import Path

import typer

from cdc.cli import app, fail, load_all


@app.command("setup-source")
def setup_source(config: Path = typer.Argument(..., help="connector YAML file")) -> None:
    """Print the SQL a DBA runs on the POS for the connector's publication(s) (a lane's with its row filter)."""
    from cdc.lanes import publication_sql

    (cfg,) = load_all([config])
    if cfg.source.type != "postgres":
        fail(f"{config}: the source is Kafka; there is nothing to set up on the POS", 2)
    for line in publication_sql(cfg):
        typer.echo(line)
