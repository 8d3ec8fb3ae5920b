"""The `pick` stage's fallback store, wired to the POS database (cdc/stages/pick.py explains the stage).

A pick with `fallback_store` needs two reads of the source that a pure stage cannot make. `PickFallback` makes
them on a connection of its own to the POS (autocommit, so every read sees the rows as they are now; neither
the replication connection nor the heartbeat's):

* `exists(key_values, store, table)`, injected as the pick's `exists`: whether `table` has a row of `store`
  for that key that the stages before the pick let through (they run on a copy of each row found; a row they
  hold counts as there, so a fallback row never masks a held designated one);
* `changes(ev)`: for a delete the pick marked `pick_fallback_needed`, the fallback store's rows for that key,
  as inserts (op 'c', `via` "pick_fallback") at the delete's own position and transaction. The pipeline runs
  them through `stages` (the stages before the pick, the pick's re-keying without its judgement, the stages
  after it) and buffers the result right after the delete, so both go in one sink transaction with one
  position: the sink's buffer keeps the last change per key, and the storefront goes straight from the
  designated price to the fallback price. With no fallback row, or one the stages drop, the delete stands.

Rows are found by the source columns the pick's `key` and `store_field` come from (renames before the pick
undone: cdc/stages/lineage.py), in the change's own source table; a store id matches as text, as the stage
compares it. Values are converted as the snapshot converts them, so they have the stream's Python types.
`check()` (at start) makes sure every source table has those columns. A failed read raises TransientError when
the POS is away (the pipeline retries) and TerminalError otherwise (e.g. no SELECT permission).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError, TransientError
from cdc.events import CREATE, UNCHANGED_TOAST, ChangeEvent
from cdc.sources.pg_conn import classify
from cdc.sources.pg_snapshot import COLUMNS_QUERY, as_text, table_columns, table_regclass, typed_row
from cdc.sources.postgres import PostgresSource
from cdc.stages import PickStage, Stage, apply_stages
from cdc.stages.lineage import Untraceable, pick_fallback_problems, source_column

log = logging.getLogger("cdc.fallback")

STATEMENT_TIMEOUT_MS = 30_000  # a lookup that hangs must not hang the connector
VIA = "pick_fallback"


@dataclass(slots=True)
class _Table:
    schema: str
    name: str
    columns: list[str]
    converters: list
    keys: tuple[str, ...]  # primary key
    types: dict  # column -> (type OID, typmod)
    query: sql.Composed | None = None


class _Rekey:
    """The pick's re-keying without its judgement, for the fallback rows (chosen because the designated row
    just went away): key the change by the pick's key."""

    def __init__(self, pick: PickStage):
        self.name = pick.name
        self.key = pick.key

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        for k in self.key:
            if k not in ev.after:  # type: ignore[operator]
                raise HoldError(f"pick fallback: the row has no key column {k!r}", rule=self.name)
        ev.key_columns = self.key
        return ev


def wire_fallback(stages: list[Stage], cfg: ConnectorConfig) -> PickFallback | None:
    """Injects the source lookups into the pick with a fallback_store (None when there is none)."""
    problems = pick_fallback_problems([getattr(s, "config", None) for s in stages])
    if problems:
        i, field, msg = problems[0]
        raise TerminalError(f"transforms[{stages[i].name}].{field}: {msg}")
    for i, st in enumerate(stages):
        if isinstance(st, PickStage) and st.config.fallback_store is not None:
            fb = PickFallback(cfg, stages, i)
            st.exists = fb.exists
            return fb
    return None


class PickFallback:
    def __init__(self, cfg: ConnectorConfig, stages: list[Stage], index: int):
        self.cfg = cfg
        self.pick: PickStage = stages[index]  # type: ignore[assignment]
        self.before = stages[:index]
        self.stages: list[Stage] = [*self.before, _Rekey(self.pick), *stages[index + 1 :]]
        configs = [s.config for s in self.before]  # type: ignore[attr-defined]
        try:
            self.key_src = {k: source_column(configs, k, "key column", "the pick") for k in self.pick.key}
            store_field = self.pick.config.store_field
            self.store_src = source_column(configs, store_field, "store_field", "the pick")  # type: ignore[arg-type]
        except Untraceable as e:
            raise TerminalError(
                f"transforms: {self.pick.name}: fallback_store looks rows up in the source, but {e}"
            ) from None
        history = cfg.sink.history
        self.changed_by = history.changed_by if history else None
        self._source = PostgresSource(cfg)
        self._conn: psycopg.Connection | None = None
        self._tables: dict[str, _Table] = {}

    # --- the connection ---------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._source.connect(
                autocommit=True, application_name=f"pos-cdc:{self.cfg.name}:pick-fallback"
            )
            try:
                conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            except psycopg.Error as e:
                conn.close()
                raise classify(e) from e
            self._conn = conn
        return conn

    def _fetch(self, query, params) -> list[tuple]:
        try:
            return self._connection().execute(query, params).fetchall()
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as e:
            # the table changed under us: start again (check() says what is missing if it stays so)
            self.close()
            raise TransientError(
                f"pick fallback lookup: the source table changed: {e.diag.message_primary}"
            ) from e
        except psycopg.Error as e:
            self.close()
            raise classify(e) from e

    def close(self) -> None:
        self._tables.clear()
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # --- the source tables ------------------------------------------------------------------------------

    def _table(self, table: str) -> _Table:
        t = self._tables.get(table)
        if t is not None:
            return t
        schema, name = table.split(".", 1)
        t = _Table(schema, name, *table_columns(self._fetch(COLUMNS_QUERY, (table_regclass(schema, name),))))
        self._tables[table] = t
        return t

    def check(self) -> None:
        """Every source table has the columns the lookups read (TerminalError naming what is missing)."""
        want = list(dict.fromkeys([*self.key_src.values(), self.store_src]))
        for table in self.cfg.source.tables:
            have = self._table(table).columns
            missing = [c for c in want if c not in have]
            if missing:
                raise TerminalError(
                    f"transforms: {self.pick.name}: fallback_store looks rows up in source table {table} by "
                    f"column(s) {', '.join(missing)} (the pick's key and store_field with the renames before it "
                    f"undone), which {table} does not have; rename the columns to the source's names before "
                    "the pick, or capture only tables that have them"
                )

    def _rows(self, table: str, key_values: dict[str, Any], store: Any) -> list[dict[str, Any]]:
        """The rows of `store` for the key, as they are now, with the stream's value types."""
        t = self._table(table)
        values = [key_values[k] for k in self.pick.key]
        if any(v is None for v in values):
            return []  # a NULL key matches no row
        if any(v is UNCHANGED_TOAST for v in values):
            raise HoldError(
                "pick fallback: a key value is an unchanged TOASTed value the source did not send, so the "
                "source cannot be asked about the key",
                rule=self.pick.name,
            )
        if t.query is None:
            ident = sql.Identifier
            t.query = sql.SQL(
                "SELECT {cols} FROM {table} WHERE {match} AND {store}::text = %s{order}"
            ).format(
                cols=as_text(t.columns),
                table=ident(t.schema, t.name),
                match=sql.SQL(" AND ").join(
                    sql.SQL("{} = %s").format(ident(self.key_src[k])) for k in self.pick.key
                ),
                store=ident(self.store_src),
                order=sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(map(ident, t.keys)))
                if t.keys
                else sql.SQL(""),
            )
        return [
            typed_row(t.columns, t.converters, rec) for rec in self._fetch(t.query, [*values, str(store)])
        ]

    def _event(self, table: str, row: dict[str, Any], at: ChangeEvent | None) -> ChangeEvent:
        t = self._table(table)
        headers: dict[str, Any] = {"via": VIA}
        if self.changed_by is not None:
            headers["changed_by"] = row.get(self.changed_by)
        if at is None:
            return ChangeEvent(
                CREATE,
                t.schema,
                t.name,
                None,
                row,
                0,
                0,
                0,
                0,
                key_columns=t.keys,
                headers=headers,
                types=t.types,
            )
        return ChangeEvent(
            CREATE,
            t.schema,
            t.name,
            None,
            row,
            at.lsn,
            at.commit_lsn,
            at.seq,
            at.ts_ms,
            at.txid,
            "false",
            at.db,
            at.connector_name,
            t.keys,
            headers=headers,
            types=t.types,
        )

    # --- what the pick and the pipeline call -------------------------------------------------------------

    def exists(self, key_values: dict[str, Any], store: Any, table: str) -> bool:
        for row in self._rows(table, key_values, store):
            try:
                if apply_stages(self.before, self._event(table, row, None)) is not None:
                    return True
            except HoldError:
                return True  # there, though held: the fallback must not mask it
        return False

    def changes(self, ev: ChangeEvent) -> list[ChangeEvent]:
        """The fallback store's rows for the key of `ev` (a delete the pick marked), now, as inserts at ev's
        position; the pipeline runs them through `self.stages`."""
        key_values = ev.headers.get("pick_fallback_key")
        store = ev.headers.get("pick_fallback_store", self.pick.config.fallback_store)
        table = f"{ev.schema}.{ev.table}"
        try:
            rows = self._rows(table, key_values, store) if key_values else []
        except HoldError as e:
            log.warning("%s: fallback row for %s not read: %s", self.cfg.name, key_values, e)
            return []
        return [self._event(table, row, ev) for row in rows]
