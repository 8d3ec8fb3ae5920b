"""SQL sink: upserts transformed changes into the storefront table, keyed by the configured columns.

One open sink transaction at a time. `add()` buffers changes (the last change per key wins; an unchanged TOAST
value inherits the buffered value); `write()` sends the buffer inside the open transaction; `commit(offset)`
writes the rest, the held changes and the source position, and commits them together.

Never backwards: every applied key has a row in `cdc_row_state` with the source position of the change that
put it there; a change at or below that position is skipped inside the same statement that applies the rest.
The storefront table itself is never altered.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError, TransientError
from cdc.events import DELETE, TRUNCATE, UNCHANGED_TOAST, ChangeEvent, jsonable

log = logging.getLogger("cdc.sink.sql")

UPSERT, REMOVE = "u", "d"
KEY_SEP = "\x1f"

meta = sa.MetaData()
offsets_table = sa.Table(
    "cdc_offsets",
    meta,
    sa.Column("connector", sa.String(200), primary_key=True),
    sa.Column("partition", sa.String(200), primary_key=True),
    sa.Column("position", sa.Text, nullable=False),  # JSON
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
row_state_table = sa.Table(
    "cdc_row_state",
    meta,
    sa.Column("connector", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(500), primary_key=True),
    sa.Column("commit_lsn", sa.BigInteger, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("txid", sa.BigInteger),
    sa.Column("op", sa.String(1), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)
held_table = sa.Table(
    "cdc_held",
    meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("connector", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),  # quarantine | dead_letter
    sa.Column("status", sa.String(20), nullable=False, server_default="held"),
    sa.Column("key", sa.String(500)),
    sa.Column("source_table", sa.String(200)),
    sa.Column("commit_lsn", sa.BigInteger),
    sa.Column("seq", sa.BigInteger),
    sa.Column("rule", sa.String(200)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text),  # JSON
    sa.Column("event", sa.Text, nullable=False),  # Debezium envelope, JSON
    sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("resolved_by", sa.String(200)),
    sa.Column("resolved_at", sa.DateTime(timezone=True)),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def key_text(key: tuple) -> str:
    return KEY_SEP.join(map(str, key))


@dataclass(slots=True)
class Pending:
    op: str  # UPSERT | REMOVE
    row: dict[str, Any]
    commit_lsn: int
    seq: int
    ts_ms: int
    txid: int | None


class SqlSink:
    def __init__(self, cfg: ConnectorConfig):
        self.cfg = cfg
        self.scfg = cfg.sink
        self.name = cfg.name
        self.key_cols = tuple(cfg.sink.key)
        self.pending: dict[tuple, Pending] = {}
        self.held: list[dict] = []
        self.truncate_first = False
        self.engine: sa.Engine | None = None
        self.conn: Any = None  # raw DBAPI (psycopg) connection
        self.target: sa.Table | None = None
        self.last_commit_wall = 0.0
        self.applied_ts_ms = 0  # source commit time of the newest change committed

    # --- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> None:
        url = sa.engine.make_url(self.scfg.url)
        if url.get_backend_name() != "postgresql":
            raise TerminalError(
                f"sink.url: the {url.get_backend_name()} dialect is not supported yet; "
                "use postgresql+psycopg://"
            )
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        try:
            self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
            meta.create_all(self.engine, checkfirst=True)
            self.target = self._reflect()
            self.conn = self.engine.raw_connection()
        except sa.exc.OperationalError as e:
            raise TransientError(
                f"storefront database unavailable: {str(e.orig).strip().splitlines()[0]}"
            ) from e
        self.pg = self.conn.driver_connection
        self._prepare_statements()

    def _reflect(self) -> sa.Table | None:
        schema, _, name = self.scfg.table.rpartition(".")
        insp = sa.inspect(self.engine)
        if not insp.has_table(name, schema=schema or None):
            if self.scfg.create_table:
                return None  # created from the first batch
            raise TerminalError(
                f"sink.table: table {self.scfg.table} does not exist in the storefront database "
                "(create it, or set create_table: true for a demo)"
            )
        table = sa.Table(name, sa.MetaData(), autoload_with=self.engine, schema=schema or None)
        self._check_target(table, insp)
        return table

    def _check_target(self, table: sa.Table, insp) -> None:
        cols = set(table.c.keys())
        missing = [k for k in self.key_cols if k not in cols]
        if missing:
            raise TerminalError(
                f"sink.key: storefront table {self.scfg.table} has no column {', '.join(missing)}"
            )
        if self.scfg.delete == "soft" and self.scfg.soft_delete_column not in cols:
            raise TerminalError(
                f"sink.soft_delete_column: {self.scfg.table} has no column "
                f"{self.scfg.soft_delete_column} for soft deletes"
            )
        uniques = [tuple(table.primary_key.columns.keys())]
        uniques += [tuple(u["column_names"]) for u in insp.get_unique_constraints(table.name, table.schema)]
        uniques += [
            tuple(i["column_names"]) for i in insp.get_indexes(table.name, table.schema) if i["unique"]
        ]
        if not any(set(u) == set(self.key_cols) for u in uniques):
            raise TerminalError(
                f"sink.key: {self.scfg.table} has no primary key or unique index on "
                f"({', '.join(self.key_cols)}); upserts need one: "
                f"CREATE UNIQUE INDEX ON {self.scfg.table} ({', '.join(self.key_cols)})"
            )

    def _create_target(self, row: dict[str, Any]) -> None:
        schema, _, name = self.scfg.table.rpartition(".")
        cols = [sa.Column(c, _sa_type(v), primary_key=c in self.key_cols) for c, v in row.items()]
        if self.scfg.delete == "soft" and self.scfg.soft_delete_column not in row:
            cols.append(sa.Column(self.scfg.soft_delete_column, sa.DateTime(timezone=True)))
        table = sa.Table(name, sa.MetaData(), *cols, schema=schema or None)
        table.create(self.engine, checkfirst=True)
        self.target = table
        log.info("created target table %s", self.scfg.table)

    def _prepare_statements(self) -> None:
        self._stage_ready = False
        self._warned: set[str] = set()
        self._merge_cache: dict[tuple, sql.Composed] = {}

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection must not mask the real error
                pass
            self.conn = None
        if self.engine is not None:
            self.engine.dispose()

    # --- reading bookkeeping --------------------------------------------------------------------------

    def load_offset(self, partition: str = "wal") -> dict | None:
        with self.engine.connect() as c:
            row = c.execute(
                sa.select(offsets_table.c.position).where(
                    offsets_table.c.connector == self.name, offsets_table.c.partition == partition
                )
            ).first()
        return json.loads(row[0]) if row else None

    def forget_offsets(self) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(offsets_table).where(offsets_table.c.connector == self.name))

    # --- buffering ------------------------------------------------------------------------------------

    def _key(self, row: dict[str, Any] | None, ev: ChangeEvent) -> tuple:
        try:
            key = tuple(row[k] for k in self.key_cols)
        except (KeyError, TypeError):
            raise HoldError(
                f"the change has no value for key column(s) {', '.join(self.key_cols)} "
                f"(check the transforms' rename/drop)",
                rule="sink.key",
            ) from None
        if None in key or UNCHANGED_TOAST in key:
            raise HoldError(f"key column(s) {', '.join(self.key_cols)} are NULL", rule="sink.key")
        return key

    def add(self, ev: ChangeEvent) -> None:
        op = ev.op
        if op == TRUNCATE:
            if self.scfg.truncate == "delete":
                self.pending.clear()
                self.truncate_first = True
            return
        if op == DELETE:
            self._put(self._key(ev.before, ev), REMOVE, ev.before, ev)
            return
        after = ev.after
        key = self._key(after, ev)
        before = ev.before
        if before is not None and op == "u":
            try:
                old = tuple(before[k] for k in self.key_cols)
            except KeyError:
                old = key
            if old != key and None not in old:  # the key changed: the row moves
                self._put(old, REMOVE, before, ev)
        self._put(key, UPSERT, after, ev)

    def _put(self, key: tuple, op: str, row: dict, ev: ChangeEvent) -> None:
        prev = self.pending.get(key)
        if prev is not None and op == UPSERT and prev.op == UPSERT and UNCHANGED_TOAST in row.values():
            row = {c: (prev.row.get(c, v) if v is UNCHANGED_TOAST else v) for c, v in row.items()}
        self.pending[key] = Pending(op, row, ev.commit_lsn, ev.seq, ev.ts_ms, ev.txid)

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None:
        row = ev.row or {}
        key = tuple(row.get(k) for k in self.key_cols)
        self.held.append(
            {
                "connector": self.name,
                "kind": kind,
                "status": "held",
                "key": key_text(key) if None not in key else None,
                "source_table": f"{ev.schema}.{ev.table}",
                "commit_lsn": ev.commit_lsn,
                "seq": ev.seq,
                "rule": err.rule,
                "reason": err.reason,
                "details": json.dumps(jsonable(err.details)),
                "event": json.dumps(ev.to_envelope()),
                "held_at": utcnow(),
            }
        )

    @property
    def pending_count(self) -> int:
        return len(self.pending) + len(self.held) + self.truncate_first

    # --- writing --------------------------------------------------------------------------------------

    def write(self) -> None:
        """Sends the buffered changes inside the open transaction (no commit)."""
        try:
            self._write()
        except Exception as e:
            raise _classify(e) from e

    def _write(self) -> None:
        cur = self.pg.cursor()
        if self.truncate_first:
            self._truncate(cur)
            self.truncate_first = False
        if self.pending:
            if self.target is None:
                first = next((p.row for p in self.pending.values() if p.op == UPSERT), None)
                if first is None:
                    self.pending.clear()
                    return
                self._create_target(first)
            groups: dict[tuple, list] = {}  # changes that write the same columns go in one statement
            for key, p in self.pending.items():
                if p.op == UPSERT:
                    cols = tuple(p.row)
                    if UNCHANGED_TOAST in p.row.values():  # leave the sink's value as it is
                        cols = tuple(c for c in cols if p.row[c] is not UNCHANGED_TOAST)
                else:
                    cols = self.key_cols
                groups.setdefault(cols, []).append((key, p))
            for cols, items in groups.items():
                self._merge(cur, items, self._columns(cols))
            self.pending.clear()
        if self.held:
            self.pg.cursor().executemany(
                sql.SQL("INSERT INTO cdc_held ({}) VALUES ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, self.held[0])),
                    sql.SQL(", ").join(sql.Placeholder(k) for k in self.held[0]),
                ),
                self.held,
            )
            self.held.clear()

    def _columns(self, present: tuple[str, ...]) -> list[str]:
        """The target's columns among those a change carries (schema drift: extra ones are ignored)."""
        target_cols = self.target.c.keys()
        extra = set(present) - set(target_cols)
        if extra - self._warned:
            self._warned |= extra
            log.warning("columns %s are not in %s and are ignored", ", ".join(sorted(extra)), self.scfg.table)
        return [c for c in target_cols if c in present or c in self.key_cols]

    def _ensure_stage(self, cur) -> None:
        if not self._stage_ready:
            cur.execute(
                sql.SQL("CREATE TEMP TABLE IF NOT EXISTS cdc_stage AS SELECT * FROM {} WITH NO DATA").format(
                    self._tid()
                )
            )
            cur.execute(
                "ALTER TABLE cdc_stage ADD COLUMN IF NOT EXISTS __k text, ADD COLUMN IF NOT EXISTS __op "
                "char(1), ADD COLUMN IF NOT EXISTS __lsn bigint, ADD COLUMN IF NOT EXISTS __seq bigint, "
                "ADD COLUMN IF NOT EXISTS __ts bigint, ADD COLUMN IF NOT EXISTS __tx bigint"
            )
            self._stage_ready = True
        else:
            cur.execute("TRUNCATE cdc_stage")

    def _tid(self) -> sql.Identifier:
        t = self.target
        return sql.Identifier(t.schema, t.name) if t.schema else sql.Identifier(t.name)

    def _merge(self, cur, items: list, cols: list[str]) -> None:
        self._ensure_stage(cur)
        ident = sql.Identifier
        stage_cols = sql.SQL(", ").join(map(ident, [*cols, "__k", "__op", "__lsn", "__seq", "__ts", "__tx"]))
        with cur.copy(sql.SQL("COPY cdc_stage ({}) FROM STDIN").format(stage_cols)) as cp:
            write_row = cp.write_row
            for key, p in items:
                row = p.row
                if p.op == UPSERT:
                    vals = [row.get(c) for c in cols]
                else:
                    vals = [row.get(c) if c in self.key_cols else None for c in cols]
                vals += (key_text(key), p.op, p.commit_lsn, p.seq, p.ts_ms, p.txid)
                write_row(vals)
        cur.execute(self._merge_sql(tuple(cols)), {"c": self.name})

    def _merge_sql(self, cols: tuple[str, ...]) -> sql.Composed:
        cache = self._merge_cache
        if cols in cache:
            return cache[cols]
        ident, S = sql.Identifier, sql.SQL
        tid = self._tid()
        keys = self.key_cols
        sd = self.scfg.soft_delete_column if self.scfg.delete == "soft" else None
        col_list = S(", ").join(map(ident, cols))
        sets = [S("{0} = EXCLUDED.{0}").format(ident(c)) for c in cols if c not in keys]
        if sd and sd not in cols:
            sets.append(S("{} = NULL").format(ident(sd)))
        conflict = S("DO UPDATE SET {}").format(S(", ").join(sets)) if sets else S("DO NOTHING")
        match = S(" AND ").join(S("t.{0} = s.{0}").format(ident(k)) for k in keys)
        if sd:
            remove = S(
                "UPDATE {} AS t SET {} = to_timestamp(s.__ts / 1000.0) FROM s WHERE s.__op = 'd' AND {}"
            ).format(tid, ident(sd), match)
        else:
            remove = S("DELETE FROM {} AS t USING s WHERE s.__op = 'd' AND {}").format(tid, match)
        stmt = S(
            "WITH s AS (SELECT st.* FROM cdc_stage st LEFT JOIN cdc_row_state rs"
            " ON rs.connector = %(c)s AND rs.key = st.__k"
            " WHERE rs.key IS NULL OR (rs.commit_lsn, rs.seq) < (st.__lsn, st.__seq)),"
            " up AS (INSERT INTO {tid} AS t ({cols}) SELECT {cols} FROM s WHERE s.__op = 'u'"
            " ON CONFLICT ({keys}) {conflict}),"
            " rm AS ({remove})"
            " INSERT INTO cdc_row_state (connector, key, commit_lsn, seq, ts_ms, txid, op, applied_at)"
            " SELECT %(c)s, __k, __lsn, __seq, __ts, __tx, __op, now() FROM s"
            " ON CONFLICT (connector, key) DO UPDATE SET commit_lsn = EXCLUDED.commit_lsn, seq = EXCLUDED.seq,"
            " ts_ms = EXCLUDED.ts_ms, txid = EXCLUDED.txid, op = EXCLUDED.op, applied_at = EXCLUDED.applied_at"
        ).format(
            tid=tid, cols=col_list, keys=S(", ").join(map(ident, keys)), conflict=conflict, remove=remove
        )
        cache[cols] = stmt
        return stmt

    def _truncate(self, cur) -> None:
        if self.target is None:
            return
        if self.scfg.delete == "soft":
            cur.execute(
                sql.SQL("UPDATE {} SET {} = now() WHERE {} IS NULL").format(
                    self._tid(),
                    sql.Identifier(self.scfg.soft_delete_column),
                    sql.Identifier(self.scfg.soft_delete_column),
                )
            )
        else:
            cur.execute(sql.SQL("DELETE FROM {}").format(self._tid()))
        cur.execute("DELETE FROM cdc_row_state WHERE connector = %s", (self.name,))

    def commit(self, position: dict, partition: str = "wal", ts_ms: int | None = None) -> None:
        """Writes what is buffered, stores `position`, and commits it all in one transaction."""
        try:
            self._write()
            self.pg.execute(
                "INSERT INTO cdc_offsets (connector, partition, position, updated_at) VALUES (%s, %s, %s, now())"
                " ON CONFLICT (connector, partition) DO UPDATE SET position = EXCLUDED.position,"
                " updated_at = EXCLUDED.updated_at",
                (self.name, partition, json.dumps(position)),
            )
            self.pg.commit()
        except Exception as e:
            raise _classify(e) from e
        self.last_commit_wall = time.time()
        if ts_ms:
            self.applied_ts_ms = ts_ms

    def rollback(self) -> None:
        self.pending.clear()
        self.held.clear()
        self.truncate_first = False
        if self.conn is not None:
            try:
                self.pg.rollback()
            except Exception:  # noqa: BLE001 - the connection may be gone; reopening will tell
                pass


def _sa_type(value: Any) -> sa.types.TypeEngine:
    import decimal
    import uuid

    return {
        bool: sa.Boolean(),
        int: sa.BigInteger(),
        decimal.Decimal: sa.Numeric(),
        float: sa.Float(),
        dt.datetime: sa.DateTime(timezone=True),
        dt.date: sa.Date(),
        dt.time: sa.Time(),
        bytes: sa.LargeBinary(),
        uuid.UUID: sa.Uuid(),
    }.get(type(value), sa.Text())


def _classify(err: Exception) -> Exception:
    import psycopg

    if isinstance(err, TerminalError | TransientError | HoldError):
        return err
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, psycopg.OperationalError):
        return TransientError(f"storefront database unavailable: {first}")
    state = getattr(err, "sqlstate", None) or ""
    if state.startswith(("08", "57P", "53", "40")):
        return TransientError(f"storefront database error [{state}]: {first}")
    return TerminalError(f"storefront database error [{state or '?'}]: {first}")
