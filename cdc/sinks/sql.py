"""SQL sink: upserts transformed changes into the storefront table, keyed by the configured columns.

One open sink transaction at a time. `add()` buffers changes (the last change per key wins; an unchanged TOAST
value inherits the buffered value); `write()` sends the buffer inside the open transaction; `commit(position)`
writes the rest, the held changes and the source position, and commits them together.

Never backwards: every applied key has the source position of the change that put it there, appended to
`cdc_applied` by the write and folded into `cdc_row_state` (bookkeeping.fold) before any check reads it, and
in small steps meanwhile (fold_step, on a thread of the pipeline); a change at or below the key's position is
skipped (see dialects.py). Changes above the stored source position need no check at all (`_may_be_stale`),
which is the streaming case. A "fresh" write (`write(fresh=True)`: a scheduled price, or an approval, whose
caller checked the key's position under a lock) skips that check. A row the database refuses (too long, out
of range, a constraint) is found by bisecting its group under savepoints and dead-lettered with the
database's error; the rest of the batch is applied. The storefront table itself is never altered.

In the same transaction as the changes it applies, the sink also marks older quarantined changes of the same
keys superseded, keeps the keys' scheduled prices (cdc/schedule.py) and writes price history (cdc/history.py).
"""

from __future__ import annotations

import json
import logging
import operator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc import history, schedule
from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError, TransientError
from cdc.events import DELETE, TRUNCATE, UNCHANGED_TOAST, ChangeEvent, Position, jsonable
from cdc.sinks.bookkeeping import (
    applied_table,
    fold,
    held_table,
    key_text,
    lock_connector,
    meta,
    offsets_table,
    row_state_table,
    scheduled_table,
    upsert,
    utcnow,
)
from cdc.sinks.dialects import REMOVE, UPSERT, CoreMerge, MySqlMerge, PgMerge
from cdc.stored import dump_event

log = logging.getLogger("cdc.sink.sql")

__all__ = ["SqlSink", "applied_table", "held_table", "offsets_table", "row_state_table", "key_text"]


@dataclass(slots=True)
class Pending:
    op: str  # UPSERT | REMOVE
    row: dict[str, Any]
    ev: ChangeEvent
    earlier: list[Pending] | None = None  # with history: the key's changes this one replaced in the buffer


class SqlSink:
    def __init__(self, cfg: ConnectorConfig):
        self.cfg = cfg
        self.scfg = cfg.sink
        self.name = cfg.name
        self.key_cols = tuple(cfg.sink.key)
        k0 = self.key_cols[0]
        self._keyget = (
            operator.itemgetter(*self.key_cols) if len(self.key_cols) > 1 else lambda row: (row[k0],)
        )
        self.soft_delete_column = cfg.sink.soft_delete_column if cfg.sink.delete == "soft" else None
        self.pending: dict[tuple, Pending] = {}
        self.held: list[dict] = []
        self.truncate_first = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{cfg.name}-sink")
        self._inflight: Future | None = None
        self.lookups = False  # set when stages read the storefront through this sink (guard)
        self.engine: sa.Engine | None = None
        self.conn: sa.Connection | None = None
        self.target: sa.Table | None = None
        self.dialect = ""
        self.dead_lettered = 0  # rows the database refused, since start (for metrics)
        self.floor: int | None = None  # stored source position (commit LSN) once loaded; see _may_be_stale
        # cdc_applied entries this sink appended (with those found at open), and how many of them fold_step
        # folded: written by the writing thread and the folding thread respectively
        self.appended = 0
        self.folded = 0
        self._fold_conn: sa.Connection | None = None
        self._untouched = False  # the open transaction has written nothing yet (see _apply)
        self._complete: set[tuple[str, ...]] = set()  # column sets found to satisfy the target's NOT NULLs
        self._merger: PgMerge | CoreMerge | None = None
        self._store_offset: sa.Insert | None = None  # the cdc_offsets upsert, built once
        self._pg_offset_sql: str | None = None  # ... and as psycopg's text
        self._warned: set[str] = set()
        self.history = cfg.sink.history
        self.scheduling = any(getattr(t, "type", None) == "schedule" for t in cfg.transforms)
        # loaded at open, kept up to date by this sink's own commits (reopen after a rollback):
        self.held_keys: dict[str, tuple[int, int]] = {}  # key -> newest held quarantine position
        self.scheduled_keys: set[str] = set()  # keys with a cdc_scheduled entry
        self.next_due_ms: int | None = None  # earliest cdc_scheduled due time
        self._fetched: dict[str, Any] = {}  # prefetch(): key text -> stored value of _fetched_field
        self._fetched_field: str | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> None:
        url = sa.engine.make_url(self.scfg.url)
        self.dialect = url.get_backend_name()
        if self.dialect not in ("postgresql", "mysql", "sqlite"):
            raise TerminalError(
                f"sink.url: {self.dialect} is not supported; use postgresql+psycopg://, "
                "mysql+pymysql:// (MariaDB/MySQL) or sqlite:///"
            )
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        elif url.drivername in ("mysql", "mariadb"):
            url = url.set(drivername=f"{url.drivername}+pymysql")
        try:
            self.engine = _engine(url)
            meta.create_all(self.engine, checkfirst=True)
            self._load_bookkeeping()
            self.target = self._reflect()
            self.conn = self.engine.connect()
            self._merger = self._make_merger()
            if self.target is not None:
                self._merger.prepare(self.conn)
        except Exception as e:
            self.close()
            raise _classify(e) from e

    def _load_bookkeeping(self) -> None:
        h = held_table
        with self.engine.begin() as c:
            if "typed_event" not in {col["name"] for col in sa.inspect(c).get_columns("cdc_held")}:
                c.execute(sa.text("ALTER TABLE cdc_held ADD COLUMN typed_event TEXT"))  # an older cdc_held
            for kt, lsn, seq in c.execute(
                sa.select(h.c.row_key, h.c.commit_lsn, h.c.seq).where(
                    h.c.connector == self.name,
                    h.c.kind == "quarantine",
                    h.c.status == "held",
                    h.c.row_key.is_not(None),
                )
            ):
                self.held_keys[kt] = max(self.held_keys.get(kt, (-1, -1)), (lsn, seq))
            t = scheduled_table
            self.scheduled_keys = set(c.scalars(sa.select(t.c.row_key).where(t.c.connector == self.name)))
            a = applied_table
            self.appended = c.scalar(sa.select(sa.func.sum(a.c.size)).where(a.c.connector == self.name)) or 0
        self.refresh_next_due()

    def refresh_next_due(self) -> None:
        t = scheduled_table
        with self.engine.connect() as c:
            self.next_due_ms = c.scalar(sa.select(sa.func.min(t.c.due_ms)).where(t.c.connector == self.name))

    def _make_merger(self) -> PgMerge | CoreMerge:
        return {"postgresql": PgMerge, "mysql": MySqlMerge}.get(self.dialect, CoreMerge)(self)

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
        if self.soft_delete_column and self.soft_delete_column not in cols:
            raise TerminalError(
                f"sink.soft_delete_column: {self.scfg.table} has no column {self.soft_delete_column} for soft deletes"
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
        cols = [
            sa.Column(c, _sa_type(v, self.dialect), primary_key=c in self.key_cols) for c, v in row.items()
        ]
        if self.soft_delete_column and self.soft_delete_column not in row:
            cols.append(sa.Column(self.soft_delete_column, sa.DateTime(timezone=True)))
        table = sa.Table(name, sa.MetaData(), *cols, schema=schema or None)
        with self.engine.begin() as c:
            table.create(c, checkfirst=True)
        self.target = table
        self._merger = self._make_merger()
        self._merger.prepare(self.conn)
        log.info("%s: created target table %s", self.name, self.scfg.table)

    def close(self) -> None:
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - closing; the error was or will be reported by the caller
            pass
        self.close_folding()
        self._writer.shutdown(wait=True)
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
        try:
            with self.engine.connect() as c:
                row = c.execute(
                    sa.select(offsets_table.c.position).where(
                        offsets_table.c.connector == self.name, offsets_table.c.partition == partition
                    )
                ).first()
        except Exception as e:
            raise _classify(e) from e
        position = json.loads(row[0]) if row else None
        if partition == "wal":
            self.floor = position["commit_lsn"] if position else 0
        return position

    def forget_offsets(self) -> None:
        with self.engine.begin() as c:
            c.execute(sa.delete(offsets_table).where(offsets_table.c.connector == self.name))

    # --- buffering ------------------------------------------------------------------------------------

    def _key(self, row: dict[str, Any] | None, ev: ChangeEvent) -> tuple:
        try:
            key = self._keyget(row)
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
                self.truncate_first = ev.position  # what was held before it is superseded by it
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
                if ev.toast and UNCHANGED_TOAST in after.values():
                    self._rename_row(old, key)  # the source did not resend some values: keep them
                self._put(old, REMOVE, before, ev)
        self._put(key, UPSERT, after, ev)

    def _rename_row(self, old: tuple, new: tuple) -> None:
        """Moves the stored row from key `old` to `new` in place (a key change whose unchanged TOAST values
        were not sent); what is buffered goes first, so the order of changes holds."""
        self.write()
        if self.target is None:
            return
        t = self.target
        try:
            conn = self._tx()
            self._untouched = False
            conn.execute(
                t.update()
                .where(sa.and_(*(t.c[k] == v for k, v in zip(self.key_cols, old, strict=True))))
                .values(dict(zip(self.key_cols, new, strict=True)))
            )
        except Exception as e:
            raise _classify(e) from e

    def _put(self, key: tuple, op: str, row: dict, ev: ChangeEvent) -> None:
        prev = self.pending.get(key)
        if (
            prev is not None
            and op == UPSERT
            and prev.op == UPSERT
            and ev.toast
            and UNCHANGED_TOAST in row.values()
        ):
            row = {c: (prev.row.get(c, v) if v is UNCHANGED_TOAST else v) for c, v in row.items()}
        earlier = None
        if prev is not None and self.history:  # each change gets its own history entry
            earlier, prev.earlier = prev.earlier or [], None
            earlier.append(prev)
        self.pending[key] = Pending(op, row, ev, earlier)

    def current_value(self, field: str, row: dict[str, Any]) -> Any:
        """The storefront's value of `field` for the key of `row` as this transaction sees it: the buffered
        change for the key if there is one, else the stored row (None: no such row, or soft-deleted). For the
        guard's max_change_pct."""
        try:
            key = self._keyget(row)
        except (KeyError, TypeError):
            raise HoldError(
                f"the row has no value for key column(s) {', '.join(self.key_cols)}, so the storefront's "
                f"{field} cannot be looked up (put the guard after the stages that name the key)",
                details={"field": field},
            ) from None
        p = self.pending.get(key)
        if p is not None:
            if p.op == REMOVE:
                return None
            v = p.row.get(field, UNCHANGED_TOAST)
            if v is not UNCHANGED_TOAST:
                return v
        if self.target is None or None in key:
            return None
        if field == self._fetched_field:
            kt = key_text(key)
            if kt in self._fetched:
                return self._fetched[kt]
        try:
            return next(iter(self.stored_rows(self._tx(), [key], [field], visible=True)), {}).get(field)
        except Exception as e:
            raise _classify(e) from e

    def prefetch(self, field: str, rows: list[dict[str, Any]]) -> None:
        """Reads the stored `field` of the keys of `rows` in a few statements, for current_value (a run of
        changes whose guard compares with the storefront); forgotten when the sink next writes."""
        if self.target is None:
            return
        keys: dict[str, tuple] = {}
        for row in rows:
            try:
                key = self._keyget(row)
            except (KeyError, TypeError):
                continue
            if None not in key and UNCHANGED_TOAST not in key:
                keys[key_text(key)] = key
        if field != self._fetched_field:
            self._fetched, self._fetched_field = {}, field
        want = [k for kt, k in keys.items() if kt not in self._fetched]
        try:
            for r in self.stored_rows(self._tx(), want, [field], visible=True):
                self._fetched[key_text(tuple(r[k] for k in self.key_cols))] = r[field]
        except Exception as e:
            raise _classify(e) from e
        for kt in keys:
            self._fetched.setdefault(kt, None)  # no such row

    def stored_rows(self, conn: sa.Connection, keys: list[tuple], cols: list[str], visible: bool = False):
        """The storefront's rows for `keys` (key columns and `cols`, as mappings), a few hundred keys a statement;
        `visible`: not soft-deleted."""
        t, kc = self.target, self.key_cols
        columns = [t.c[c] for c in dict.fromkeys([*kc, *cols])]
        strs = [isinstance(t.c[k].type, sa.String) for k in kc]
        for i in range(0, len(keys), 500):
            chunk = [
                tuple(str(v) if s and not isinstance(v, str) else v for v, s in zip(k, strs, strict=True))
                for k in keys[i : i + 500]
            ]
            if len(kc) == 1:
                where = t.c[kc[0]].in_([k[0] for k in chunk])
            else:
                where = sa.tuple_(*(t.c[k] for k in kc)).in_(chunk)
            q = sa.select(*columns).where(where)
            if visible and self.soft_delete_column:
                q = q.where(t.c[self.soft_delete_column].is_(None))
            for r in conn.execute(q):
                yield r._mapping

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None:
        record = self._held_row(ev, err, kind)
        if kind == "quarantine" and record["row_key"] is not None:
            row_key = record["row_key"]
            self.held_keys[row_key] = max(self.held_keys.get(row_key, (-1, -1)), (ev.commit_lsn, ev.seq))
        self.held.append(record)

    def _held_row(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> dict:
        row = ev.row or {}
        key = tuple(row.get(k) for k in self.key_cols)
        row_key = key_text(key) if None not in key else None
        return {
            "connector": self.name,
            "kind": kind,
            "status": "held",
            "row_key": row_key,
            "source_table": f"{ev.schema}.{ev.table}",
            "commit_lsn": ev.commit_lsn,
            "seq": ev.seq,
            "rule": err.rule,
            "reason": err.reason,
            "details": json.dumps(jsonable(err.details)),
            "event": json.dumps(ev.to_envelope()),
            "typed_event": _typed(ev),
            "held_at": utcnow(),
        }

    @property
    def _tracks_applied(self) -> bool:
        """Whether a write must learn which changes it applied (history, superseding, schedules)."""
        return bool(self.history or self.held_keys or self.scheduling or self.scheduled_keys)

    # --- writing --------------------------------------------------------------------------------------

    def _tx(self) -> sa.Connection:
        if not self.conn.in_transaction():
            self.conn.begin()
            lock_connector(self.conn, self.name)  # approvals and retries wait for this transaction
            self._untouched = True
        return self.conn

    def _fold(self, conn: sa.Connection) -> None:
        """All recorded positions into cdc_row_state, inside the open transaction (before reading it)."""
        self._untouched = False
        fold(conn, self.name)

    @property
    def backlog(self) -> int:
        """About how many recorded positions wait to be folded (fold_step's trigger; _fold needs none)."""
        return max(0, self.appended - self.folded)

    def fold_step(self, limit: int) -> int:
        """Folds the oldest ~`limit` recorded positions into cdc_row_state, on a connection and in a
        transaction of its own, so it may run on another thread while this sink writes: ids only grow with
        the connector's commits, so what it sees is a committed prefix, and folds commute (the newest
        position per key wins, keys locked in order). It gives up at once on a row lock the writer holds
        (lock timeout) and is tried again later. Returns how many it folded."""
        start = self.appended
        try:
            if self._fold_conn is None:
                self._fold_conn = self.engine.connect()
                if self.dialect == "mysql":  # no gap locks in the writer's way
                    self._fold_conn = self._fold_conn.execution_options(isolation_level="READ COMMITTED")
                elif self.dialect == "sqlite":  # one writer at a time: wait briefly, then try later
                    self._fold_conn.connection.driver_connection.execute("PRAGMA busy_timeout = 200")
            conn = self._fold_conn
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                elif self.dialect == "mysql":
                    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                done = fold(conn, self.name, limit)
        except Exception as e:
            self.close_folding()
            raise _classify(e) from e
        self.folded = start if done < limit else self.folded + done  # less than asked: all folded
        return done

    def close_folding(self) -> None:
        conn, self._fold_conn = self._fold_conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection; the next step opens another
                pass

    def write(self, fresh: bool = False) -> None:
        """Sends the buffered changes inside the open transaction (no commit). `fresh`: the caller made sure
        no newer change has been applied for these keys (the never-backwards check is skipped)."""
        try:
            self._write(fresh)
        except Exception as e:
            raise _classify(e) from e

    def write_async(self) -> None:
        """Like write(), but the database work runs on the writer thread while the caller goes on buffering
        (the storefront merges one batch while the next is decoded). Used only when nothing else needs the
        connection between writes (no guard lookups, history, schedules or held keys); the next write,
        commit or rollback waits for it and re-raises its error."""
        if self.lookups or self._tracks_applied or self.target is None:
            self.write()
            return
        self._wait()
        taken = self._take()
        self._tx()  # begun on this thread; the writer only adds statements to it
        self._inflight = self._writer.submit(self._write_taken, taken, False)

    def _wait(self) -> None:
        job, self._inflight = self._inflight, None
        if job is not None:
            try:
                job.result()
            except Exception as e:
                raise _classify(e) from e

    def _take(self) -> tuple:
        taken = (self.pending, self.held, self.truncate_first)
        self.pending, self.held, self.truncate_first = {}, [], False
        return taken

    def _write(self, fresh: bool = False) -> None:
        self._wait()
        self._write_taken(self._take(), fresh)

    def _write_taken(self, taken: tuple, fresh: bool) -> None:
        pending, held, truncate_first = taken
        conn = self._tx()
        self._fetched = {}  # what is written changes what was read
        if truncate_first:
            self._untouched = False
            self._truncate(conn)
        applied: list[tuple[str, Pending]] = []
        old_rows: dict[str, dict] = {}
        if pending and self.target is None:
            first = next((p.row for p in pending.values() if p.op == UPSERT), None)
            if first is None:
                pending = {}  # only deletes, of rows a table that does not exist yet cannot have
            else:
                self._create_target(first)
                conn = self._tx()
        if pending:
            items = list(pending.items())
            self._fill_unsent(conn, items)
            if self.history:
                old_rows = history.old_rows(self, conn, items)
            refused: dict[tuple, dict] = {}  # key -> its dead-letter record
            for cols, group in self._groups(items):
                alone, self._untouched = self._untouched, False
                self._apply(conn, group, cols, fresh, refused, alone)
            if self._tracks_applied:
                applied = self._applied(conn, items, fresh, refused)
            held = held + list(refused.values())
        if held:
            conn.execute(held_table.insert(), held)
        if truncate_first:
            self._held_before_truncate(conn, truncate_first)
        if applied:
            now = utcnow()
            if self.held_keys:
                self._supersede(conn, applied, now)
            if self.scheduling or self.scheduled_keys:
                schedule.record(self, conn, applied, now)
            if self.history:
                history.record(self, conn, applied, old_rows, now)

    def _groups(self, items: list) -> list[tuple[list[str], list]]:
        """The changes that write the same columns, one statement each: [(the target's columns, changes)].
        An update's unchanged TOAST values are left out (the sink keeps its value); a set of columns that
        leaves a required storefront column empty stops the connector (_check_complete)."""
        groups: dict[tuple, list] = {}
        last_keys, last_group = None, None  # most rows have the columns of the row before
        for item in items:
            p = item[1]
            if p.op == UPSERT:
                row = p.row
                if p.ev.toast and UNCHANGED_TOAST in row.values():
                    cols = tuple(c for c in row if row[c] is not UNCHANGED_TOAST)
                elif row.keys() == last_keys:
                    last_group.append(item)
                    continue
                else:
                    cols = tuple(row)
                    if cols not in self._complete:
                        self._check_complete(cols)
                    last_keys, last_group = row.keys(), groups.setdefault(cols, [])
                    last_group.append(item)
                    continue
            else:
                cols = self.key_cols
            groups.setdefault(cols, []).append(item)
        return [(self._columns(cols), group) for cols, group in groups.items()]

    def _applied(self, conn: sa.Connection, items: list, fresh: bool, refused: dict) -> list:
        """(key text, change) of the changes this write applied: all but the refused ones, unless some may
        have been skipped as older than their row (a replay), which the rows' recorded positions tell."""
        out = [(key_text(k), p) for k, p in items if k not in refused]
        if fresh or not self._may_be_stale(items):
            return out
        self._fold(conn)
        rs, state = row_state_table, {}
        for i in range(0, len(out), 500):
            chunk = [kt for kt, _ in out[i : i + 500]]
            q = sa.select(rs.c.row_key, rs.c.commit_lsn, rs.c.seq)
            for kt, lsn, seq in conn.execute(q.where(rs.c.connector == self.name, rs.c.row_key.in_(chunk))):
                state[kt] = (lsn, seq)
        return [(kt, p) for kt, p in out if state.get(kt) == (p.ev.commit_lsn, p.ev.seq)]

    def _supersede(self, conn: sa.Connection, applied: list, now) -> None:
        """Quarantined changes of these keys older than the change just applied are superseded by it."""
        h = held_table
        for kt, p in applied:
            newest = self.held_keys.get(kt)
            if newest is None:
                continue
            lsn, seq = p.ev.commit_lsn, p.ev.seq
            self._mark_superseded(
                conn,
                p.ev.position,
                f"newer change {p.ev.position}",
                now,
                h.c.kind == "quarantine",
                h.c.row_key == kt,
            )
            if newest < (lsn, seq):
                del self.held_keys[kt]

    def _apply(
        self,
        conn: sa.Connection,
        items: list,
        cols: list[str],
        fresh: bool,
        refused: dict,
        alone: bool = False,
    ) -> None:
        """Merges a group under a savepoint; a group the database refuses is bisected down to the rows that
        cause it, which are dead-lettered with the database's error. `alone`: nothing else has been written
        in the transaction yet, so the merge goes without a savepoint (two round trips less for each small
        transaction), and if the database refuses it, the transaction starts again and the group goes the
        way of the others."""
        check_stale = not fresh and self._may_be_stale(items)
        if check_stale:
            self._fold(conn)
        if alone and not check_stale:
            try:
                self._merger.merge(conn, items, cols, check_stale=False)
                self.appended += len(items)
                return
            except Exception as e:
                if not _is_row_error(e):
                    raise
                conn.rollback()
                self._merger.forget_stage()
                conn = self._tx()
                self._untouched = False  # this group is written below: the next ones need savepoints
        try:
            with conn.begin_nested():
                self._merger.merge(conn, items, cols, check_stale=check_stale)
            self.appended += len(items)
        except Exception as e:
            if not _is_row_error(e):
                raise
            if len(items) > 1:
                mid = len(items) // 2
                self._apply(conn, items[:mid], cols, fresh, refused)
                self._apply(conn, items[mid:], cols, fresh, refused)
                return
            key, p = items[0]
            message = _first_line(getattr(e, "orig", None) or e)
            log.warning("%s: storefront refused a row, dead-lettered: %s", self.name, message)
            self.dead_lettered += 1
            refused[key] = self._held_row(
                p.ev, HoldError(f"the storefront database refused the row: {message}", rule="sink.write")
            )

    def _may_be_stale(self, items: list) -> bool:
        """Whether any change could be older than a row's recorded position. Every recorded position is at or
        below the stored source position (they commit together), so changes above it need no lookup."""
        if self.floor is None:
            return True
        floor = self.floor
        return any(p.ev.commit_lsn <= floor for _, p in items)

    def _required(self) -> list[str]:
        """The storefront columns that must have a value: NOT NULL, no default, not generated."""
        return [
            c.name
            for c in self.target.c
            if not c.nullable
            and c.server_default is None
            and not (c.primary_key and c.autoincrement is True)
            and c.computed is None
            and c.identity is None
        ]

    def _check_complete(self, present: tuple[str, ...]) -> None:
        """A storefront column that must have a value (NOT NULL, no default) and that the changes do not carry
        makes every insert fail: a terminal error naming it, rather than a dead letter for every row."""
        missing = [c for c in self._required() if c not in present]
        if missing:
            raise TerminalError(
                f"sink.table: {self.scfg.table} requires {', '.join(missing)} (NOT NULL without a default), "
                f"which the changes do not carry (they have {', '.join(present)}): give the column(s) a default, "
                "or set them with a transform (rename or set)"
            )
        self._complete.add(present)

    def _fill_unsent(self, conn: sa.Connection, items: list) -> None:
        """Updates that did not resend a TOASTed value of a required column: PostgreSQL, MariaDB and SQLite
        check NOT NULL on the row an upsert proposes even when it ends in an update, so such a row takes the
        stored value (read in this transaction). A row the storefront does not have keeps the gap, and the
        database's refusal dead-letters it: it cannot be inserted without the value."""
        todo = [
            (k, p) for k, p in items if p.ev.toast and p.op == UPSERT and UNCHANGED_TOAST in p.row.values()
        ]
        required = self._required() if todo else ()
        cols = [c for c in required if any(p.row.get(c) is UNCHANGED_TOAST for _, p in todo)]
        if not cols:
            return
        todo = [(k, p) for k, p in todo if any(p.row.get(c) is UNCHANGED_TOAST for c in cols)]
        kc = self.key_cols
        stored = {
            key_text(tuple(r[k] for k in kc)): r for r in self.stored_rows(conn, [k for k, _ in todo], cols)
        }
        for key, p in todo:
            r = stored.get(key_text(key))
            if r is not None:
                p.row = {c: (r[c] if v is UNCHANGED_TOAST and c in cols else v) for c, v in p.row.items()}

    def _columns(self, present: tuple[str, ...]) -> list[str]:
        """The target's columns among those a change carries (schema drift: extra ones are ignored)."""
        target_cols = self.target.c.keys()
        extra = set(present) - set(target_cols)
        if extra - self._warned:
            self._warned |= extra
            log.warning(
                "%s: columns %s are not in %s and are ignored",
                self.name,
                ", ".join(sorted(extra)),
                self.scfg.table,
            )
        return [c for c in target_cols if c in present or c in self.key_cols]

    def _held_before_truncate(self, conn: sa.Connection, at: Position) -> None:
        """What was held before a source truncate (in earlier batches or earlier in this one) is superseded by
        it: approving or retrying it would bring back a row the POS truncated."""
        self._mark_superseded(conn, at, f"source TRUNCATE at {at}", utcnow())
        self.held_keys = {
            k: newest for k, newest in self.held_keys.items() if newest > (at.commit_lsn, at.seq)
        }

    def _mark_superseded(self, conn: sa.Connection, at: Position, by: str, now, *where) -> None:
        """Marks this connector's held entries older than `at` (and matching `where`) superseded `by` it."""
        h, lsn, seq = held_table, at.commit_lsn, at.seq
        conn.execute(
            h.update()
            .where(
                h.c.connector == self.name,
                h.c.status == "held",
                *where,
                sa.or_(h.c.commit_lsn < lsn, sa.and_(h.c.commit_lsn == lsn, h.c.seq < seq)),
            )
            .values(status="superseded", resolved_by=f"pos-cdc: {by}", resolved_at=now)
        )

    def _truncate(self, conn: sa.Connection) -> None:
        if self.target is None:
            return
        if self.soft_delete_column:
            col = self.target.c[self.soft_delete_column]
            conn.execute(self.target.update().where(col.is_(None)).values({col: utcnow()}))
        else:
            conn.execute(self.target.delete())
        conn.execute(row_state_table.delete().where(row_state_table.c.connector == self.name))
        conn.execute(applied_table.delete().where(applied_table.c.connector == self.name))
        conn.execute(scheduled_table.delete().where(scheduled_table.c.connector == self.name))
        self.scheduled_keys.clear()

    def commit(self, position: dict | None, partition: str = "wal") -> None:
        """Writes what is buffered, stores `position` (None: no new position), and commits it all in one
        transaction."""
        try:
            if position is None:
                self._write()
                self._tx().commit()
                return
            if self._store_offset is None:
                self._store_offset = upsert(
                    self.dialect, offsets_table, ("connector", "partition"), ["position", "updated_at"]
                )
            offset = {
                "connector": self.name,
                "partition": partition,
                "position": json.dumps(position),
                "updated_at": utcnow(),
            }
            if not self._commit_small(offset):
                self._write()
                conn = self._tx()
                if self.dialect == "postgresql":  # the position and the COMMIT in one round trip
                    pg = conn.connection.driver_connection
                    with pg.pipeline():
                        pg.execute(self._pg_store_offset(conn), offset)
                        pg.commit()
                else:
                    conn.execute(self._store_offset, [offset])
                conn.commit()  # (PostgreSQL: SQLAlchemy's side of it; the driver has nothing left to commit)
        except Exception as e:
            self._merger.forget_stage()
            raise _classify(e) from e
        if partition == "wal" and self.floor is not None:
            self.floor = max(self.floor, position["commit_lsn"])

    def _commit_small(self, offset: dict) -> bool:
        """PostgreSQL: a few plain changes (the usual single-sale transaction) are written and committed with
        their position in one round trip (PgMerge.commit_small). Anything else, or a refused row, goes the
        usual way; True when done."""
        if (
            self.dialect != "postgresql"
            or self.target is None
            or not self.pending
            or len(self.pending) > PgMerge.SMALL
            or self.held
            or self.truncate_first
            or self._tracks_applied
            or self._inflight is not None
            or self.conn.in_transaction()
        ):
            return False
        items = list(self.pending.items())
        if self._may_be_stale(items) or any(
            p.ev.toast and UNCHANGED_TOAST in p.row.values() for _, p in items
        ):
            return False
        conn = self.conn
        try:
            self._merger.commit_small(conn, self._groups(items), self._pg_store_offset(conn), offset)
        except Exception as e:
            if _is_row_error(e):
                return False  # rolled back: the usual way finds the refused rows
            raise
        self.pending, self._fetched = {}, {}
        self.appended += len(items)
        return True

    def _pg_store_offset(self, conn: sa.Connection) -> str:
        """The offset upsert as psycopg's SQL text (named parameters)."""
        if self._pg_offset_sql is None:
            self._pg_offset_sql = str(self._store_offset.compile(dialect=conn.dialect))
        return self._pg_offset_sql

    def rollback(self) -> None:
        try:
            self._wait()
        except Exception:  # noqa: BLE001 - rolling back anyway
            pass
        self._fetched = {}
        self.pending.clear()
        self.held.clear()
        self.truncate_first = False
        self.dead_lettered = 0
        if self.conn is not None:
            try:
                self.conn.rollback()
            except Exception:  # noqa: BLE001 - the connection may be gone; reopening will tell
                pass
        if self._merger is not None:
            self._merger.forget_stage()


def _typed(ev: ChangeEvent) -> str | None:
    try:
        return dump_event(ev)
    except TypeError as e:  # a value of a type the store does not know: keep the envelope only
        log.warning("held change at %s kept without value types: %s", ev.position, e)
        return None


def _engine(url: sa.URL) -> sa.Engine:
    if url.get_backend_name() != "sqlite":
        # an unreachable storefront fails a connect in seconds (then retried), never hangs it
        return sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 10})
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 30})

    # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _sa_type(value: Any, dialect: str) -> sa.types.TypeEngine:
    import datetime as dt
    import decimal
    import uuid

    if isinstance(value, decimal.Decimal):
        return (
            sa.Text() if dialect == "sqlite" else sa.Numeric(38, 10) if dialect == "mysql" else sa.Numeric()
        )
    return {
        bool: sa.Boolean(),
        int: sa.BigInteger(),
        float: sa.Float(),
        dt.datetime: sa.DateTime(timezone=True),
        dt.date: sa.Date(),
        dt.time: sa.Time(),
        bytes: sa.LargeBinary(),
        uuid.UUID: sa.Uuid(),
    }.get(type(value), sa.String(255) if dialect == "mysql" else sa.Text())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# MySQL/MariaDB error codes: a row the table refuses (the rest of the batch can go on) ...
MYSQL_ROW_ERRORS = {1048, 1062, 1264, 1292, 1364, 1366, 1406, 1451, 1452, 1690, 3819, 4025}
# ... and a server that is away or busy (retry)
MYSQL_TRANSIENT = {1040, 1053, 1205, 1213, 2002, 2003, 2006, 2013, 2055}


def _code(err: BaseException) -> tuple[str, int | None]:
    orig = getattr(err, "orig", None) or err
    state = getattr(orig, "sqlstate", None) or ""
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    return state, code


def _is_row_error(err: BaseException) -> bool:
    """Data exception or constraint violation caused by a row's values (SQLSTATE class 22/23, or MySQL codes)."""
    if isinstance(err, HoldError):
        return True
    state, code = _code(err)
    if state[:2] in ("22", "23"):
        return True
    if code in MYSQL_ROW_ERRORS:
        return True
    return isinstance(err, sa.exc.IntegrityError) and "sqlite" in type(getattr(err, "orig", err)).__module__


def _classify(err: Exception) -> Exception:
    if isinstance(err, TerminalError | TransientError | HoldError):
        return err
    state, code = _code(err)
    first = _first_line(getattr(err, "orig", None) or err)
    import psycopg

    orig = getattr(err, "orig", None) or err
    if (
        isinstance(err, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.DisconnectionError)
        and (state[:2] in ("", "08", "57", "53", "40") or code in MYSQL_TRANSIENT or "locked" in first)
        or isinstance(orig, psycopg.OperationalError)
        and state[:2] in ("", "08", "57", "53")
        or state[:2] in ("08", "40", "53")
        or state.startswith("57P")
        or code in MYSQL_TRANSIENT
    ):
        return TransientError(f"storefront database unavailable: {first}")
    label = state or (str(code) if code is not None else "?")
    return TerminalError(f"storefront database error [{label}]: {first}")
