"""The two sides `cdc reconcile` reads (cdc/ops/reconcile.py): the POS as of one consistent point, and the
storefront table, each in the bytewise order of the storefront key's text (cdc/ops/chunks.py).

POS: a temporary logical slot exports a snapshot at its consistent point X (as the initial snapshot does,
cdc/sources/pg_snapshot.py); a REPEATABLE READ transaction imports it and reads the captured tables as text,
converted as the stream converts them, with the publication's row filter, ordered by the source columns the
storefront key comes from (renames undone), COLLATE "C". Storefront: a plain reading connection of its own
(never the sink's writing one; on SQLite an autocommit one, so a long read takes no write lock), the
visible rows, ordered by the key's text in bytewise order (PostgreSQL COLLATE "C", MariaDB CAST AS BINARY,
SQLite's BINARY collation).

When both ends are PostgreSQL and the stages only project, cdc/ops/reconcile_checksum.py compares in SQL.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from cdc.config import ConnectorConfig
from cdc.errors import TerminalError
from cdc.events import str_to_lsn
from cdc.sinks.sql.bookkeeping import KEY_SEP, key_text
from cdc.sinks.sql.target import Target
from cdc.sources.pg_conn import SESSION_OPTIONS, classify, open_replication, quote_ident, replication_command
from cdc.sources.pg_snapshot import COLUMNS_QUERY, as_text, table_columns, table_regclass

log = logging.getLogger("cdc.reconcile")

FETCH = 5000  # rows per round trip of a streamed read
WORK_MEM = "64MB"  # for the sorts of the reading sessions (their own, not the server's setting)

_TEXT_TYPES = {25, 1043}  # key columns used as they are (others cast to text)


@dataclass
class SourceTable:
    schema: str
    name: str
    names: list[str]  # the columns read (the publication's column list, if any)
    converters: list
    pk: tuple[str, ...]
    types: dict[str, tuple[int, int]]
    key_src: list[str]  # the source columns of the storefront key, in its order
    where: str | None = None  # the publication's row filter
    estimate: int = 0

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def filter_sql(self) -> sql.Composable:
        return sql.SQL(" WHERE ({})").format(sql.SQL(self.where)) if self.where else sql.SQL("")


# --- the POS ----------------------------------------------------------------------------------------------


class PosSnapshot:
    """The captured tables as of one consistent point (`point`, X), and the connector's slot."""

    def __init__(self, cfg: ConnectorConfig, key_src: list[str]):
        self.cfg = cfg
        self.key_src = key_src
        self.point = 0
        self.ts_ms = 0
        self.db = ""
        self.tables: list[SourceTable] = []
        self.conn: psycopg.Connection | None = None  # the snapshot's transaction
        self._side: psycopg.Connection | None = None  # autocommit: slot state, heartbeat, peek

    def _connect(self, **kw) -> psycopg.Connection:
        return psycopg.connect(
            self.cfg.source.dsn,
            options=SESSION_OPTIONS,
            connect_timeout=10,
            application_name=f"pos-cdc:{self.cfg.name}:reconcile",
            **kw,
        )

    def open(self) -> None:
        cfg = self.cfg
        try:
            holder = open_replication(cfg.source.dsn, cfg.name)
            try:
                tmp = f"{cfg.slot[:40]}_rec_{os.getpid()}_{int(time.time() * 1000) % 10**8}"[:63]
                row = replication_command(
                    holder,
                    f"CREATE_REPLICATION_SLOT {quote_ident(tmp)} TEMPORARY LOGICAL pgoutput EXPORT_SNAPSHOT",
                )[0]
                self.point, snap = str_to_lsn(row[1]), row[2]
                self.ts_ms = int(time.time() * 1000)
                self.conn = conn = self._connect()
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snap)))
            finally:
                holder.finish()  # the imported snapshot is the transaction's own now; the slot goes
            conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            self.db = conn.info.dbname
            self.tables = [self._table(conn, t) for t in cfg.source.tables]
        except psycopg.Error as e:
            raise classify(e) from e
        log.info("%s: reconcile: POS snapshot at %s", cfg.name, row[1])

    def _table(self, conn: psycopg.Connection, qualified: str) -> SourceTable:
        schema, name = qualified.split(".", 1)
        names, convs, pk, types = table_columns(
            conn.execute(COLUMNS_QUERY, (table_regclass(schema, name),)).fetchall()
        )
        where = None
        if conn.info.server_version >= 150000:
            pub = conn.execute(
                "SELECT attnames, rowfilter FROM pg_publication_tables "
                "WHERE pubname = %s AND schemaname = %s AND tablename = %s",
                (self.cfg.publication, schema, name),
            ).fetchone()
            if pub is not None:
                cols, where = pub
                if cols:
                    keep = [i for i, n in enumerate(names) if n in set(cols)]
                    names, convs = [names[i] for i in keep], [convs[i] for i in keep]
        missing = [c for c in self.key_src if c not in names]
        if missing:
            raise TerminalError(
                f"source table {qualified} has no column {', '.join(missing)}, which the storefront key "
                f"{', '.join(self.cfg.sink.key)} comes from"
            )
        estimate = conn.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", (table_regclass(schema, name),)
        ).fetchone()[0]
        if estimate < 0:  # never vacuumed or analyzed: count
            estimate = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()[0]
        return SourceTable(schema, name, names, convs, pk, types, list(self.key_src), where, estimate)

    def close(self) -> None:
        for c in (self.conn, self._side):
            if c is not None:
                try:
                    c.close()
                except psycopg.Error:
                    pass
        self.conn = self._side = None

    # --- rows, in the storefront key's order ----------------------------------------------------------

    def key_sql(self, t: SourceTable) -> sql.Composable:
        """The storefront key's text from the source columns (as key_text spells it); a NULL part is ''."""
        parts = [
            sql.Identifier(c)
            if t.types[c][0] in _TEXT_TYPES
            else sql.SQL("({})::text").format(sql.Identifier(c))
            for c in t.key_src
        ]
        parts = [sql.SQL("coalesce({}, '')").format(p) for p in parts]
        if len(parts) == 1:
            return parts[0]
        return sql.SQL("concat_ws(chr({}), {})").format(sql.Literal(ord(KEY_SEP)), sql.SQL(", ").join(parts))

    def rows(self, t: SourceTable) -> Iterator[tuple[str, tuple]]:
        """(key text, the row's columns as text) of every row, in key order."""
        q = sql.SQL('SELECT {cols}, {key} COLLATE "C" AS __k FROM {tbl}{where} ORDER BY __k').format(
            cols=as_text(t.names), key=self.key_sql(t), tbl=t.ident, where=t.filter_sql()
        )
        n = len(t.names)
        try:
            with self.conn.cursor(name=f"cdc_rec_{t.name}"[:60]) as cur:
                cur.itersize = FETCH
                cur.execute(q)
                for rec in cur:
                    yield rec[n], rec
        except psycopg.Error as e:
            raise classify(e) from e

    def fetch(self, query: sql.Composable, params: Any = None) -> list[tuple]:
        try:
            return self.conn.execute(query, params).fetchall()
        except psycopg.Error as e:
            raise classify(e) from e

    def stream(self, query: sql.Composable, params: Any, name: str) -> Iterator[tuple]:
        try:
            with self.conn.cursor(name=name) as cur:
                cur.itersize = FETCH
                cur.execute(query, params)
                yield from cur
        except psycopg.Error as e:
            raise classify(e) from e

    # --- the connector's slot, for settling --------------------------------------------------------------

    def side(self) -> psycopg.Connection:
        if self._side is None or self._side.closed:
            self._side = self._connect(autocommit=True)
        return self._side

    def slot_state(self, cfg=None) -> tuple[bool, int] | None:
        """(active, confirmed LSN) of the connector's (or lane's: `cfg`) slot; None when there is none."""
        cfg = cfg or self.cfg
        try:
            row = (
                self.side()
                .execute(
                    "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                    (cfg.slot,),
                )
                .fetchone()
            )
        except psycopg.Error as e:
            raise classify(e) from e
        if row is None:
            return None
        return bool(row[0]), str_to_lsn(row[1]) if row[1] else 0

    def heartbeat(self) -> bool:
        """A transactional WAL message after the point, so an idle stream commits a position past it."""
        try:
            self.side().execute("SELECT pg_logical_emit_message(true, 'pos-cdc-heartbeat', 'reconcile')")
            return True
        except psycopg.Error:
            return False

    def pending(self, after: int, cfg=None) -> int:
        """Row changes of the captured tables that the stopped connector has not applied: those of the
        transactions the slot still holds that committed after `after` (the stored position) and before the
        point. Read from a temporary copy of the slot, so the connector's own slot is never taken. `cfg`: a
        lane's connector (its slot and publication)."""
        cfg = cfg or self.cfg
        conn = self.side()
        copy = f"{cfg.slot[:40]}_rcp_{os.getpid()}"[:63]
        try:
            conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (cfg.slot, copy))
            try:
                return conn.execute(
                    "WITH m AS (SELECT xid, data FROM pg_logical_slot_peek_binary_changes(%(copy)s, %(upto)s::pg_lsn,"
                    " NULL, 'proto_version', '1', 'publication_names', %(pub)s)),"
                    " t AS (SELECT xid FROM m WHERE get_byte(data, 0) = 66"  # B: its commit LSN next
                    " AND ('x' || encode(substr(data, 2, 8), 'hex'))::bit(64)::bigint > %(after)s)"
                    " SELECT count(*) FROM m WHERE get_byte(data, 0) IN (73, 85, 68, 84)"  # I U D T
                    " AND xid IN (SELECT xid FROM t)",
                    {"copy": copy, "upto": _lsn(self.point), "pub": cfg.publication, "after": after},
                ).fetchone()[0]
            finally:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (copy,))
        except psycopg.Error as e:
            raise classify(e) from e


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


# --- the storefront -------------------------------------------------------------------------------------


class StoreReader:
    """The storefront table's visible rows, on a reading connection of its own."""

    def __init__(self, target: Target, url: sa.URL):
        self.target = target
        self.table: sa.Table = target.table
        self.key_cols = target.key_cols
        self.soft = target.soft_delete_column
        self.dialect = target.dialect
        if self.dialect == "sqlite":  # one statement, one read snapshot (WAL): no write lock held
            self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
        else:
            self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.columns = [c for c in self.table.c.keys() if c != self.soft]

    def close(self) -> None:
        self.engine.dispose()

    def key_sql(self) -> str:
        q = self.engine.dialect.identifier_preparer.quote
        keys = [q(k) for k in self.key_cols]
        if self.dialect == "postgresql":
            parts = [f"({k})::text" for k in keys]
            joined = parts[0] if len(parts) == 1 else f"concat_ws(chr({ord(KEY_SEP)}), {', '.join(parts)})"
            return f'{joined} COLLATE "C"'
        if self.dialect == "mysql":
            joined = keys[0] if len(keys) == 1 else f"CONCAT_WS(CHAR({ord(KEY_SEP)}), {', '.join(keys)})"
            return f"CAST({joined} AS BINARY)"
        return f" || char({ord(KEY_SEP)}) || ".join(f"CAST({k} AS TEXT)" for k in keys)

    def rows(self) -> Iterator[tuple[str, dict]]:
        """(key text, row) of every visible row, in key order."""
        t = self.table
        q = sa.select(*(t.c[c] for c in self.columns))
        if self.soft:
            q = q.where(t.c[self.soft].is_(None))
        q = q.order_by(sa.literal_column(self.key_sql()))
        names, kc = self.columns, self.key_cols
        single = kc[0] if len(kc) == 1 else None
        with self.engine.connect() as c:
            if self.dialect == "postgresql":
                c.exec_driver_sql(f"SET work_mem = '{WORK_MEM}'")
            res = c.execution_options(stream_results=True, yield_per=FETCH).execute(q)
            for r in res:
                row = dict(zip(names, r, strict=True))
                if single is not None:
                    v = row[single]
                    yield (v if type(v) is str else str(v)), row
                else:
                    yield key_text(tuple(row[k] for k in kc)), row
