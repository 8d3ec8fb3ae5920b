"""`cdc setup-source`, `cdc setup-sink`, `cdc drop`: what a DBA sets up for pos-cdc, and takes away
(docs/least-privilege.md; the library: cdc/ops/setup.py, cdc/ops/drop.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from cdc.cli import app, fail, load_all

ROLE_HELP = "the role pos-cdc connects as (default: the user the config's {} names)"
PASSWORD_ENV_HELP = "--apply: the environment variable holding the role's password (never printed)"


def _password(env: str, role: str) -> str | None:
    """The role's password for --apply: from $env, else asked for on a terminal; None: left as it is."""
    if os.environ.get(env):
        return os.environ[env]
    if sys.stdin.isatty():
        return typer.prompt(f"password for {role} (empty: leave it)", default="", hide_input=True,
                            confirmation_prompt=True, show_default=False) or None  # fmt: skip
    typer.echo(
        f"note: ${env} is not set: the role's password is left as it is (a new role has none)", err=True
    )
    return None


@app.command("setup-source")
def setup_source(
    config: Path = typer.Argument(..., help="connector YAML file"),
    role: str | None = typer.Option(None, "--role", help=ROLE_HELP.format("source.dsn")),
    apply: bool = typer.Option(False, "--apply", help="run it on the POS as the DBA (--admin-dsn)"),
    admin_dsn: str | None = typer.Option(
        None, "--admin-dsn", envvar="CDC_ADMIN_DSN", help="--apply: a DBA's DSN of the POS database"
    ),
    password_env: str = typer.Option("CDC_ROLE_PASSWORD", "--password-env", help=PASSWORD_ENV_HELP),
) -> None:
    """Print (or, --apply, run as a DBA) the SQL for the POS: a role with LOGIN and REPLICATION, SELECT on the
    captured tables only, and the DBA-owned publication(s) (a lane's with its row filter)."""
    from cdc.errors import CdcError
    from cdc.ops.setup import PASSWORD_NOTE, apply_source, dsn_user, source_statements

    (cfg,) = load_all([config])
    if cfg.source.type != "postgres":
        fail(f"{config}: the source is Kafka; there is nothing to set up on the POS", 2)
    user, db = dsn_user(cfg.source.dsn)
    role = role or user
    if not role:
        fail(f"{config}: source.dsn names no user: give the role with --role NAME", 2)
    if not apply:
        statements = source_statements(cfg, role, db)
        typer.echo(f"-- pos-cdc on the POS for {cfg.name}: run as a DBA (psql), or cdc setup-source --apply")
        typer.echo(statements[0])
        typer.echo(PASSWORD_NOTE.format(role=role, env=password_env))
        for s in statements[1:]:
            typer.echo(s)
        return
    if not admin_dsn:
        fail("--apply needs a DBA's connection to the POS database: --admin-dsn DSN (or $CDC_ADMIN_DSN)", 2)
    try:
        apply_source(cfg, role, admin_dsn, _password(password_env, role), typer.echo)
    except CdcError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - the database's refusal, in one line
        fail(f"the POS refused the set-up: {str(e).strip().splitlines()[0]}")
    typer.echo(f"done: {cfg.name} can run as {role} on the POS")


@app.command("setup-sink")
def setup_sink(
    config: Path = typer.Argument(..., help="connector YAML file"),
    role: str | None = typer.Option(None, "--role", help=ROLE_HELP.format("sink.url")),
    host: str = typer.Option("%", "--host", help="MariaDB: the host part of the user's account"),
    apply: bool = typer.Option(False, "--apply", help="run it on the storefront as the DBA (--admin-url)"),
    admin_url: str | None = typer.Option(
        None, "--admin-url", envvar="CDC_ADMIN_URL", help="--apply: a DBA's SQLAlchemy URL of the storefront"
    ),
    password_env: str = typer.Option("CDC_ROLE_PASSWORD", "--password-env", help=PASSWORD_ENV_HELP),
) -> None:
    """Print (or, --apply, run as a DBA) the SQL for the storefront: a role with DML on the target table and on
    pos-cdc's bookkeeping tables, which the DBA makes (in sink.bookkeeping_schema on PostgreSQL)."""
    import sqlalchemy as sa

    from cdc.errors import CdcError
    from cdc.ops.setup import PASSWORD_NOTE, apply_sink, sink_statements

    (cfg,) = load_all([config])
    if cfg.sink.type != "sql":
        fail(f"{config}: the sink is Kafka; there is nothing to set up in a storefront database", 2)
    url = sa.engine.make_url(cfg.sink.url)
    role = role or url.username
    sqlite = url.get_backend_name() == "sqlite"
    if not role and not sqlite:
        fail(f"{config}: sink.url names no user: give the role with --role NAME", 2)
    if not apply or sqlite:
        statements = sink_statements(cfg, role or "", host)
        if sqlite:
            typer.echo(statements[0])
            return
        typer.echo(f"-- pos-cdc in the storefront for {cfg.name}: run as a DBA, or cdc setup-sink --apply")
        typer.echo(statements[0])
        if url.get_backend_name() == "postgresql":
            typer.echo(PASSWORD_NOTE.format(role=role, env=password_env))
        for s in statements[1:]:
            typer.echo(s)
        return
    if not admin_url:
        fail("--apply needs a DBA's connection to the storefront: --admin-url URL (or $CDC_ADMIN_URL)", 2)
    try:
        apply_sink(cfg, role, host, admin_url, _password(password_env, role), typer.echo)
    except CdcError as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 - the database's refusal, in one line
        fail(f"the storefront refused the set-up: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}")
    typer.echo(f"done: {cfg.name} can write the storefront as {role}")


@app.command("drop")
def drop(
    config: Path = typer.Argument(..., help="connector YAML file"),
    execute: bool = typer.Option(False, "--execute", help="do it (default: print what it would do)"),
) -> None:
    """Remove what pos-cdc made for the connector: its bookkeeping rows (the tables when no other connector
    uses them), its replication slot(s), the publication(s) it made; dry run by default; refused while it runs."""
    from cdc.errors import CdcError
    from cdc.ops.drop import execute as run_plan
    from cdc.ops.drop import plan

    (cfg,) = load_all([config])
    try:
        steps = plan(cfg)
        if not execute:
            for s in steps:
                typer.echo(f"would {s.what}" if s.run else s.what)
            if any(s.run for s in steps):
                typer.echo(f"(a dry run: cdc drop {config} --execute does it)")
            return
        for s in steps:
            if s.run is None:
                typer.echo(s.what)
        run_plan(cfg, steps, typer.echo)
    except CdcError as e:
        fail(str(e))
