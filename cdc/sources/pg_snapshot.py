"""The initial snapshot of a PostgreSQL source: the captured tables copied as of a consistent point X, as
op 'r' events with the stream's value types, then a TxnEnd at X; and the helpers that read a source table's
columns as text and convert them as the stream does (also used by the pick fallback's lookups).

A temporary slot exports a snapshot whose consistent point X splits history exactly: transactions committed
before X are in the snapshot, later ones are streamed from X by the permanent slot (created earlier, so it
still holds them). No gap, no duplicate, whether or not a DBA made the slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from cdc.events import READ, ChangeEvent, TxnEnd, str_to_lsn
from cdc.progress import Progress
from cdc.sources import pgoutput as po
from cdc.sources.pg_conn import classify, open_replication, quote_ident, replication_command
from cdc.sources.pg_stream import WalPosition

log = logging.getLogger("cdc.source.postgres")


def snapshot(source) -> Iterator[ChangeEvent | TxnEnd]:
    """Copies the captured tables as of a consistent point X, then ends with TxnEnd(X).

    A temporary slot exports a snapshot whose consistent point X splits history exactly: transactions
    committed before X are in the snapshot, later ones are streamed from X by the permanent slot (created
    earlier, so it still holds them). No gap, no duplicate, whether or not a DBA made the slot.
    """
    cfg = source.cfg
    holder = open_replication(cfg.source.dsn, cfg.name)
    try:
        tmp = f"{cfg.slot}_snap_{int(time.time())}"[:63]
        row = replication_command(
            holder, f"CREATE_REPLICATION_SLOT {quote_ident(tmp)} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT"
        )[0]
        point, snap_name = str_to_lsn(row[1]), row[2]
        log.info("snapshot at %s of %s", row[1], ", ".join(cfg.source.tables))
        ts_ms = int(time.time() * 1000)
        with source.connect() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snap_name)))
            seq = 0
            for table in cfg.source.tables:
                for ev in _copy_table(
                    conn, cfg.name, source.db, table, point, ts_ms, seq, cfg.source.row_filter
                ):
                    seq = ev.seq
                    yield ev
            conn.rollback()
        yield TxnEnd(WalPosition(point, point, snapshot=True), ts_ms, snapshot=True)
    except psycopg.Error as e:
        raise classify(e) from e
    finally:
        holder.finish()


def _copy_table(
    conn: psycopg.Connection,
    connector: str,
    db: str,
    table: str,
    point: int,
    ts_ms: int,
    seq: int,
    row_filter: str | None = None,
):
    """The table's rows at the snapshot, those of the publication's row filter (a lane) only."""
    schema, name = table.split(".", 1)
    names, convs, keys, types = table_columns(
        conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
    )
    query = sql.SQL("SELECT {} FROM {}").format(as_text(names), sql.Identifier(schema, name))
    if row_filter:
        query += sql.SQL(" WHERE {}").format(sql.SQL(row_filter))
    estimate = conn.execute(
        "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (table,)
    ).fetchone()
    progress = Progress(f"{connector}: snapshot of {table}", max(estimate[0], 0) or None, log)
    with conn.cursor(name=f"cdc_snap_{name}") as cur:
        cur.itersize = 5000
        cur.execute(query)
        for rec in cur:
            seq += 1
            progress.advance()
            after = typed_row(names, convs, rec)
            yield ChangeEvent(
                READ,
                schema,
                name,
                None,
                after,
                point,
                point,
                seq,
                ts_ms,
                None,
                "true",
                db,
                connector,
                keys,
                toast=False,
            )
    progress.close()


# A source table's columns in order: name, type OID, whether it is part of the primary key (table_columns).
COLUMNS_QUERY = (
    "SELECT a.attname, a.atttypid, coalesce(a.attnum = ANY(i.indkey), false), a.atttypmod"
    " FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary"
    " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)


def table_regclass(schema: str, name: str) -> str:
    """COLUMNS_QUERY's parameter for a table."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def table_columns(rows: list[tuple]) -> tuple[list[str], list[po.Converter], tuple[str, ...], dict]:
    """COLUMNS_QUERY's rows -> (column names, their text converters, the primary key columns, name -> (type
    OID, typmod) as ChangeEvent.types)."""
    return (
        [r[0] for r in rows],
        [po.converter_for(r[1]) for r in rows],
        tuple(r[0] for r in rows if r[2]),
        {r[0]: (r[1], r[3]) for r in rows},
    )


def as_text(names: list[str]) -> sql.Composed:
    """The select list that reads the columns as text, as the stream sends them (see typed_row)."""
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names)


def typed_row(names: list[str], converters: list, record: tuple) -> dict[str, Any]:
    """A row read with as_text() -> {column: value} with the same Python types as the stream's."""
    return {n: (None if v is None else f(v)) for n, f, v in zip(names, converters, record, strict=True)}
