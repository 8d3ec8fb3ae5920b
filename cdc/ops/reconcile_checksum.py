"""`cdc reconcile`'s comparison in SQL (cdc/ops/reconcile.py), when both ends are PostgreSQL and the stages only
rename and drop columns. Both databases hash their rows over the same canonical text — the key's text and every
compared column as the storefront's column type renders it (the POS value is cast to that type, as the
storefront parses what the sink sends) — and sum the hashes (60 bits of md5 each) per bucket of the key's
hash, about 16 rows a bucket. Only the buckets that differ are read again, as (key, row hash) in key order;
only the keys whose hashes differ are read whole into Python and judged. So a scattered 1 % of drift costs
a second pass over the tables in SQL and Python work for the changed rows only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from cdc.ops.chunks import bucket_count, differing_buckets, merge_sorted
from cdc.ops.reconcile_sides import FETCH, WORK_MEM, SourceTable
from cdc.sinks.sql.bookkeeping import KEY_SEP
from cdc.sinks.sql.target import Target
from cdc.sources.pg_conn import quote_ident
from cdc.sources.pg_snapshot import as_text

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
    same: frozenset[str] = frozenset()  # storefront columns of exactly their source column's type
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
        if col in self.same or t == "text" or t.startswith("character varying"):
            return sql.SQL("({})::text").format(sql.Identifier(src))
        return sql.SQL("((({})::text)::{})::text").format(sql.Identifier(src), sql.SQL(t))


def _joined(parts: list[sql.Composable]) -> sql.Composable:
    if len(parts) == 1:
        return parts[0]
    return sql.SQL("concat_ws(chr({}), {})").format(sql.Literal(ord(KEY_SEP)), sql.SQL(", ").join(parts))


def checksum_plan(
    stages: list, source: SourceTable, target: Target, store_types: dict[str, tuple[str, int, int]]
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
    same = frozenset(c for c, src in cols.items() if source.types[src] == store_types[c][1:])
    return ChecksumPlan(source, cols, {c: t[0] for c, t in store_types.items()}, target.key_cols, same), ""


def pg_store_types(conn: psycopg.Connection, table: sa.Table) -> dict[str, tuple[str, int, int]]:
    """column -> (format_type, type OID, typmod) of a PostgreSQL storefront table."""
    reg = (
        f"{quote_ident(table.schema)}.{quote_ident(table.name)}" if table.schema else quote_ident(table.name)
    )
    return column_types(conn, reg)


def column_types(conn: psycopg.Connection, reg: str) -> dict[str, tuple[str, int, int]]:
    """column -> (format_type, type OID, typmod) of a table (`reg`: its regclass text)."""
    rows = conn.execute(
        "SELECT attname, format_type(atttypid, atttypmod), atttypid, atttypmod FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (reg,),
    ).fetchall()
    return {n: (t, oid, mod) for n, t, oid, mod in rows}


_HASH = sql.SQL("('x' || substr(md5({}), 1, 15))::bit(60)::bigint")


# a key text's bucket, as cdc/ops/chunks.py's bucket_of computes it
_BUCKET = sql.SQL("mod(('x' || substr(md5({}), 1, 8))::bit(32)::bigint, %(n)s)")


def bucket_query(
    key: sql.Composable, row: sql.Composable, table: sql.Composable, where: sql.Composable
) -> sql.Composed:
    """Per bucket of %(n)s (by the key's hash): its number, row count and checksum, in bucket order."""
    return sql.SQL(
        "SELECT b, count(*), sum(h) FROM (SELECT {bucket} AS b, {hash} AS h FROM {table}{where}) s"
        " GROUP BY b ORDER BY b"
    ).format(bucket=_BUCKET.format(key), hash=_HASH.format(row), table=table, where=where)


def hash_query(key: sql.Composable, row: sql.Composable, table: sql.Composable, where: sql.Composable):
    """Key and row hash of every row in the buckets %(c)s (int[]) of %(n)s, in key order."""
    return sql.SQL(
        'SELECT k, h FROM (SELECT {key} COLLATE "C" AS k, {hash} AS h FROM {table}{where}) s'
        " WHERE {bucket} = ANY(%(c)s::bigint[]) ORDER BY k"
    ).format(key=key, hash=_HASH.format(row), table=table, where=where, bucket=_BUCKET.format(sql.SQL("k")))


def rows_query(
    key: sql.Composable,
    row: sql.Composable,
    payload: sql.Composable,
    table: sql.Composable,
    also: sql.Composable,
    key_columns: list[tuple[str, str]],
) -> sql.Composed:
    """Key, hash and `payload` of the rows whose key text is one of %(keys)s (text[]), in key order. The
    keys are turned back into the key columns' types (`key_columns`: (column, format_type)), so the
    table's primary-key index finds them."""
    parts = []
    for i, (_col, typ) in enumerate(key_columns, 1):
        text = sql.SQL("u.k") if len(key_columns) == 1 else sql.SQL("split_part(u.k, chr(31), {})").format(i)
        if typ != "text" and not typ.startswith("character varying"):
            text = sql.SQL("(NULLIF({}, ''))::{}").format(text, sql.SQL(typ))
        parts.append(text)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c, _ in key_columns)
    match = sql.SQL("({}) IN (SELECT {} FROM unnest(%(keys)s::text[]) AS u(k))").format(
        cols, sql.SQL(", ").join(parts)
    )
    return sql.SQL(
        'SELECT k, h, {payload} FROM (SELECT {key} COLLATE "C" AS k, {hash} AS h, {payload} FROM {table}'
        " WHERE {match}{also}) s ORDER BY k"
    ).format(key=key, hash=_HASH.format(row), payload=payload, table=table, match=match, also=also)


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


# --- the comparison --------------------------------------------------------------------------------------

KEYS_PER_FETCH = 2000  # differing keys whose rows are read per round trip


def compare_by_checksums(run: Any, plan: ChecksumPlan) -> None:
    """Bucket checksums in SQL on both sides; in the buckets that differ, each row's key and hash; only the
    rows whose hashes differ are read whole and judged (`run`: cdc/ops/reconcile.py's _Run)."""
    pos, report, t, target = run.pos, run.report, plan.source, run.sink.target
    store = PgStore(run.reader.engine)
    try:
        where = t.filter_sql()
        report.buckets = n = bucket_count(t.estimate)
        soft = target.soft_delete_column
        store_also = sql.SQL(" AND {} IS NULL").format(sql.Identifier(soft)) if soft else sql.SQL("")
        store_where = sql.SQL(" WHERE {} IS NULL").format(sql.Identifier(soft)) if soft else sql.SQL("")
        table = store_ident(target.table)
        params = {"n": n}
        # both sides at once: each database hashes its rows while the other does (and while Python merges)
        differ, report.source_rows, report.storefront_rows = differing_buckets(
            ahead(
                pos.stream(bucket_query(plan.src_key, plan.src_row, t.ident, where), params, "cdc_rec_sum")
            ),
            ahead(
                store.stream(
                    bucket_query(plan.store_key, plan.store_row, table, store_where), params, "cdc_rec_sum"
                )
            ),
        )
        run.progress.advance(report.source_rows)
        report.buckets_differing = len(differ)
        if not differ:
            return
        params = {"n": n, "c": differ}
        src_types = column_types(pos.conn, t.ident.as_string(pos.conn))
        # both sides at once: each database hashes and sorts its rows while the other does, and while the
        # merge below runs
        src = ahead(
            pos.stream(hash_query(plan.src_key, plan.src_row, t.ident, where), params, "cdc_rec_hash")
        )
        sto = ahead(
            store.stream(
                hash_query(plan.store_key, plan.store_row, table, store_where), params, "cdc_rec_hash"
            )
        )
        src_q = rows_query(
            plan.src_key,
            plan.src_row,
            as_text(t.names),
            t.ident,
            sql.SQL(" AND ({})").format(sql.SQL(t.where)) if t.where else sql.SQL(""),
            [(plan.columns[k], src_types[plan.columns[k]][0]) for k in plan.key],
        )
        cols = run.reader.columns
        sto_q = rows_query(
            plan.store_key,
            plan.store_row,
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            table,
            store_also,
            [(k, plan.store_types[k]) for k in plan.key],
        )
        keys: list[str] = []
        for key, group, stored in merge_sorted(((k, h) for k, h in src), ((k, h) for k, h in sto)):
            if len(group) == 1 and group[0] == stored:
                continue  # the same row (its hash)
            keys.append(key)
            if len(keys) >= KEYS_PER_FETCH:
                _judge(run, pos, store, src_q, sto_q, t, cols, keys)
                keys = []
        if keys:
            _judge(run, pos, store, src_q, sto_q, t, cols, keys)
    finally:
        store.close()


def _judge(run, pos, store: PgStore, src_q, sto_q, t: SourceTable, cols: list[str], keys: list[str]) -> None:
    """Reads the rows of `keys` whole on both sides and judges each key."""
    src = ((r[0], (t, r[2:])) for r in pos.fetch(src_q, {"keys": keys}))
    sto = ((r[0], dict(zip(cols, r[2:], strict=True))) for r in store.fetch(sto_q, {"keys": keys}))
    judge = run.judge
    for key, group, stored in merge_sorted(src, sto):
        judge(key, group, stored)


def ahead(rows: Iterator[tuple], batch: int = FETCH, depth: int = 4) -> Iterator[tuple]:
    """`rows`, read from now on by a thread of its own, up to `depth` batches ahead of the caller (bounded
    memory); its error is raised to the caller."""
    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def read() -> None:
        try:
            buf = []
            for r in rows:
                buf.append(r)
                if len(buf) >= batch:
                    _put(q, buf, stop)
                    buf = []
            _put(q, buf, stop)
            _put(q, done, stop)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            _put(q, e, stop)

    th = threading.Thread(target=read, daemon=True, name="reconcile-read")
    th.start()

    def drain() -> Iterator[tuple]:
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            stop.set()
            th.join(30)

    return drain()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
