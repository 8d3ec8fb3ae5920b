"""`cdc reconcile`'s comparison in SQL (cdc/ops/reconcile.py), when both ends are PostgreSQL and the stages only
rename and drop columns: each side's rows in key-range chunks (width_bucket over boundaries sampled from the
POS keys), per chunk a row count and the sum of the rows' md5 (60 bits each) over the same canonical text on
both sides — every compared column as the storefront's column type renders it (the POS value is cast to that
type, as the storefront parses what the sink sends). Only the rows of chunks that differ are read into
Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from cdc.ops.reconcile_sides import FETCH, WORK_MEM, SourceTable
from cdc.sinks.sql.bookkeeping import KEY_SEP
from cdc.sinks.sql.target import Target
from cdc.sources.pg_stream import quote_ident

# type OIDs whose text the checksums may compare (the storefront parses the sink's str(value) of them as a
# cast from text does), and those a key may have (their text is str() of the value the drivers return)
_CHECKSUM_TYPES = {16, 20, 21, 23, 25, 1042, 1043, 1082, 1114, 1184, 1700, 2950}
_KEY_TYPES = {20, 21, 23, 25, 1043, 1082, 2950}


# --- both sides in SQL (PostgreSQL to PostgreSQL, projection stages) ------------------------------------


@dataclass
class ChecksumPlan:
    """The same canonical text on both sides: the key's text, and md5 of ROW(key, each compared column as
    the storefront's column type renders it)::text."""

    source: SourceTable
    columns: dict[str, str]  # storefront column -> the source column it comes from (the compared ones)
    store_types: dict[str, str]  # storefront column -> its type as format_type spells it
    key: tuple[str, ...]  # the storefront key columns
    src_key: sql.Composable = field(init=False)
    src_row: sql.Composable = field(init=False)
    store_key: sql.Composable = field(init=False)
    store_row: sql.Composable = field(init=False)

    def __post_init__(self) -> None:
        ident, S = sql.Identifier, sql.SQL
        self.src_key = _joined(
            [S("coalesce({}, '')").format(self._as_store(self.columns[k], k)) for k in self.key]
        )
        self.store_key = _joined([S("({})::text").format(ident(k)) for k in self.key])
        others = [c for c in self.columns if c not in self.key]
        src = [self._as_store(self.columns[c], c) for c in others] or [S("NULL")]
        store = [S("({})::text").format(ident(c)) for c in others] or [S("NULL")]
        self.src_row = S("ROW({}, {})::text").format(self.src_key, S(", ").join(src))
        self.store_row = S("ROW({}, {})::text").format(self.store_key, S(", ").join(store))

    def _as_store(self, src: str, col: str) -> sql.Composable:
        """The source column's value as the storefront column's type renders it."""
        t = self.store_types[col]
        if t == "text" or t.startswith("character varying"):
            return sql.SQL("({})::text").format(sql.Identifier(src))
        return sql.SQL("((({})::text)::{})::text").format(sql.Identifier(src), sql.SQL(t))


def _joined(parts: list[sql.Composable]) -> sql.Composable:
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("concat_ws(chr({}), {})").format(sql.Literal(ord(KEY_SEP)), sql.SQL(", ").join(parts))


def checksum_plan(
    stages: list, source: SourceTable, target: Target, store_types: dict[str, tuple[str, int]]
) -> tuple[ChecksumPlan | None, str]:
    """A ChecksumPlan when the checksums can be computed in SQL on both sides, else (None, why not)."""
    names = {n: n for n in source.names}
    for st in stages:
        kind = st.config.type
        if kind == "rename":
            names = {st.config.fields.get(out, out): src for out, src in names.items()}
            if len(names) != len({st.config.fields.get(o, o) for o in names}):
                return None, "a rename lands two columns on one name"
        elif kind == "drop":
            names = {o: s for o, s in names.items() if o not in st.config.fields}
        else:
            return None, f"stage {st.name} changes values (compared row by row in Python)"
    cols = {c: names[c] for c in target.table.c.keys() if c in names and c != target.soft_delete_column}
    if any(k not in cols for k in target.key_cols):
        return None, "a key column does not come from the source"
    for c, src in cols.items():
        if source.types[src][0] not in _CHECKSUM_TYPES or store_types[c][1] not in _CHECKSUM_TYPES:
            return None, f"column {c} has a type the checksums do not cover"
    for k in target.key_cols:
        if store_types[k][1] not in _KEY_TYPES or source.types[cols[k]][0] not in _KEY_TYPES:
            return None, f"key column {k} has a type the checksums do not cover"
    return ChecksumPlan(source, cols, {c: t for c, (t, _) in store_types.items()}, target.key_cols), ""


def pg_store_types(conn: psycopg.Connection, table: sa.Table) -> dict[str, tuple[str, int]]:
    """column -> (format_type, type OID) of a PostgreSQL storefront table."""
    reg = (
        f"{quote_ident(table.schema)}.{quote_ident(table.name)}" if table.schema else quote_ident(table.name)
    )
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), atttypid FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (reg,),
    ).fetchall()
    return {n: (t, oid) for n, t, oid in rows}


_HASH = sql.SQL("('x' || substr(md5({}), 1, 15))::bit(60)::bigint")


def chunk_query(
    key: sql.Composable, row: sql.Composable, table: sql.Composable, where: sql.Composable
) -> sql.Composed:
    """Per chunk of bounds (%(b)s, text[]): its number, row count and checksum."""
    return sql.SQL(
        "SELECT CASE WHEN cardinality(%(b)s::text[]) = 0 THEN 0 ELSE width_bucket(k, %(b)s::text[]) END AS c,"
        ' count(*), sum(h) FROM (SELECT {key} COLLATE "C" AS k, {hash} AS h FROM {table}{where}) s GROUP BY 1'
    ).format(key=key, hash=_HASH.format(row), table=table, where=where)


def drill_query(
    key: sql.Composable,
    row: sql.Composable,
    payload: sql.Composable,
    table: sql.Composable,
    where: sql.Composable,
) -> sql.Composed:
    """The rows of the chunks %(c)s (int[]) of bounds %(b)s: key, hash and `payload`, in key order."""
    return sql.SQL(
        'SELECT k, h, {payload} FROM (SELECT {key} COLLATE "C" AS k, {hash} AS h, {payload} FROM {table}{where}) s'
        " WHERE (CASE WHEN cardinality(%(b)s::text[]) = 0 THEN 0 ELSE width_bucket(k, %(b)s::text[]) END)"
        " = ANY(%(c)s::int[]) ORDER BY k"
    ).format(key=key, hash=_HASH.format(row), payload=payload, table=table, where=where)


def store_ident(table: sa.Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)


class PgStore:
    """A plain psycopg connection to a PostgreSQL storefront (for the SQL checksums), UTC and ISO dates."""

    def __init__(self, engine: sa.Engine):
        raw = engine.raw_connection()
        self._raw = raw
        self.conn: psycopg.Connection = raw.driver_connection
        self.conn.execute(f"SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET work_mem = '{WORK_MEM}'")
        self.conn.commit()

    def fetch(self, query: sql.Composable, params: Any) -> list[tuple]:
        return self.conn.execute(query, params).fetchall()

    def stream(self, query: sql.Composable, params: Any, name: str) -> Iterator[tuple]:
        with self.conn.cursor(name=name) as cur:
            cur.itersize = FETCH
            cur.execute(query, params)
            yield from cur
        self.conn.commit()

    def close(self) -> None:
        try:
            self._raw.close()
        except Exception:  # noqa: BLE001 - closing only
            pass
