"""`cdc validate --check-source`: what only the databases know, checked before anything runs and without
creating anything (no slot, no publication, no bookkeeping table).

On both: the privileges `cdc run` checks at start (cdc/privileges.py), each missing GRANT named. On the POS:
every captured table exists. Through the stages: a probe row with every column of the table
(a value of each column's type) goes through them as a change would; a stage that finds a field the row lacks
(a misspelt column in a `where`, a `money` field that is not there) is reported with the columns the table
has. On the storefront: the target table exists with the key's unique index (the sink's own check), the
columns the changes carry that it lacks (ignored at run time, said here), the NOT NULL columns without a
default the changes never carry (refused at run time), and a value type its column would refuse (text into a
numeric column).
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

import psycopg
import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import CdcError, HoldError
from cdc.events import ChangeEvent
from cdc.privileges import check_source as check_source_privileges
from cdc.privileges import check_storefront
from cdc.sources import pgoutput as po
from cdc.sources.pg_snapshot import COLUMNS_QUERY, table_regclass

# a sample text per type, as the stream would send it; by category for the rest (N numeric, S string, B bool)
SAMPLES = {
    1082: "2026-01-01",
    1083: "12:00:00",
    1114: "2026-01-01 00:00:00",
    1184: "2026-01-01 00:00:00+00",
    2950: "00000000-0000-0000-0000-000000000001",
}
BY_CATEGORY = {"N": "1", "S": "x", "B": "t"}
MISSING_FIELD = re.compile(r"has no field '([^']+)'|(\w+) is missing from the row")


def check_source(cfg: ConnectorConfig) -> list[str]:
    """Problems found, one line each, naming the stage or the table and what to fix; [] when all is well."""
    if cfg.source.type != "postgres":
        return []  # a Kafka source: the topics' rows are only known when they come
    try:
        probes, problems = _pos_probes(cfg)
    except psycopg.Error as e:
        return [f"source.dsn: cannot connect to the POS: {str(e).strip().splitlines()[0]}"]
    outputs: list[dict] = []
    for probe in probes:
        row, found = _through_stages(cfg, probe)
        problems += found
        if row is not None:
            outputs.append(row)
    if cfg.sink.type == "sql":
        problems += _storefront(cfg, outputs)
    return problems


def _pos_probes(cfg: ConnectorConfig) -> tuple[list[ChangeEvent], list[str]]:
    probes, problems = [], []
    with psycopg.connect(cfg.source.dsn, autocommit=True) as conn:
        try:
            check_source_privileges(conn, cfg)  # what `cdc run` checks first, each missing GRANT named
        except CdcError as e:
            problems.append(f"source: {e}")
        for table in cfg.source.tables:
            schema, _, name = table.rpartition(".")
            if conn.execute("SELECT to_regclass(%s)", (table_regclass(schema, name),)).fetchone()[0] is None:
                problems.append(f"source.tables: table {table} does not exist in the POS database")
                continue
            rows = conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
            cats = dict(
                conn.execute(
                    "SELECT a.attname, t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                    " WHERE a.attrelid = %s::regclass AND a.attnum > 0",
                    (table_regclass(schema, name),),
                ).fetchall()
            )
            after = {col: _sample(oid, cats.get(col)) for col, oid, _, _ in rows}
            keys = tuple(col for col, _, pk, _ in rows if pk)
            probes.append(ChangeEvent("c", schema, name, None, after, 0, 0, 0, 0, key_columns=keys))
    return probes, problems


def _sample(oid: int, category: str | None) -> Any:
    text = SAMPLES.get(oid) or BY_CATEGORY.get(category or "")
    if text is None:
        return None
    try:
        return po.converter_for(oid)(text)
    except (ValueError, ArithmeticError):
        return None


def _through_stages(cfg: ConnectorConfig, probe: ChangeEvent) -> tuple[dict | None, list[str]]:
    """The probe's row after the stages, and the fields a stage looked for and did not find. A stage that
    leaves the probe out (a filter on the sample's values) is passed by; one that would hold it for its values
    (a guard's limits) says nothing about the config."""
    from cdc.stages import build_stages

    table = f"{probe.schema}.{probe.table}"
    ev, problems = probe, []
    for stage in build_stages(cfg.transforms):
        try:
            out = stage(_copy(ev))
        except HoldError as e:
            m = MISSING_FIELD.search(str(e))
            if m:
                field = m.group(1) or m.group(2)
                problems.append(
                    f"transforms[{stage.name}]: a row of {table} has no field {field!r} at this stage "
                    f"(fields here: {', '.join(sorted(ev.after or {}))})"
                )
            continue
        except (CdcError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError):
            continue  # needs what only a running connector has (a lookup), or the sample's values
        if out is not None:
            ev = out
    return ev.after, problems


def _copy(ev: ChangeEvent) -> ChangeEvent:
    import dataclasses

    return dataclasses.replace(ev, after=dict(ev.after or {}), headers=dict(ev.headers))


def _storefront(cfg: ConnectorConfig, outputs: list[dict]) -> list[str]:
    from cdc.sinks.sql.storefront import engine as store_engine
    from cdc.sinks.sql.target import Target

    engine = store_engine(
        cfg.sink.url, cfg.sink.bookkeeping_schema
    )  # as the sink connects: timeout, search path
    target = Target(cfg.sink, cfg.name, engine.dialect.name)
    try:
        target.reflect(engine)
        check_storefront(engine, cfg)
    except CdcError as e:
        return [str(e)]
    except sa.exc.SQLAlchemyError as e:
        return [f"sink.url: cannot read the storefront: {str(getattr(e, 'orig', e)).strip().splitlines()[0]}"]
    finally:
        engine.dispose()
    if target.table is None:  # create_table: made from the first change
        return []
    problems: list[str] = []
    columns = {c.name: c for c in target.table.columns}
    carried = {k for row in outputs for k in row}
    for extra in sorted(carried - set(columns) - {target.soft_delete_column}):
        problems.append(
            f"sink.table: {target.name} has no column {extra!r}, which the changes carry (it would be ignored; "
            "drop or rename it in the stages)"
        )
    for name, col in columns.items():
        if (
            outputs
            and name not in carried
            and not col.nullable
            and col.server_default is None
            and col.autoincrement is not True
            and name != target.soft_delete_column
        ):
            problems.append(
                f"sink.table: {target.name}.{name} is NOT NULL without a default and no change carries it "
                "(every write would be refused): set it in the stages or give it a default"
            )
    for row in outputs:
        for name, value in row.items():
            col = columns.get(name)
            if col is not None and value is not None and not _fits(value, col.type):
                problems.append(
                    f"sink.table: {target.name}.{name} is {col.type} and the changes give it "
                    f"{type(value).__name__} values (it would refuse them): convert it in the stages"
                )
    return problems


def _fits(value: Any, type_: sa.types.TypeEngine) -> bool:
    """Whether a column of this type takes a value of this Python type as the sink writes it."""
    if isinstance(type_, sa.Boolean):
        return isinstance(value, bool | int)
    if isinstance(type_, sa.Integer | sa.Numeric):
        return isinstance(value, int | Decimal | float) and not isinstance(value, bool)
    if isinstance(type_, sa.DateTime | sa.Date):
        return isinstance(value, dt.date | str)
    return True
