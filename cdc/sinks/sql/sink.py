"""The SQL sink: upserts transformed changes into the storefront table, keyed by the configured columns.

One open sink transaction at a time. `add()` buffers changes (buffer.py: the last change per key wins);
`write()` sends the buffer inside the open transaction (writer.py); `commit(positions)` writes the rest, the
held changes and the source positions, and commits them together (offsets.py). The storefront table itself
is never altered (target.py).

Its collaborators, each with one job, import one way (sink -> writer -> target, held log, lookups; the buffer
depends on nothing): `Storefront` (engine, connection, errors), `KeyBuffer`, `Target`, `Writer` (merges with
dead-letter bisection, dialects in pg_merge.py / mysql_merge.py / core_merge.py), `Offsets`, `Folder` (the
thread folding recorded key positions), `HeldLog` (cdc_held), `Schedules` (cdc_scheduled) and `History`
(cdc_price_history).

Hooks the pipeline calls besides the data path: `wire(stages)` gives the stages their storefront lookups (a
guard's max_change_pct) and keeps them for scheduled prices; `prefetch()` reads a run of keys' values at once;
`tick()` applies the scheduled prices that fell due (only with nothing buffered); `caught_up` lets folding run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError
from cdc.events import ChangeEvent
from cdc.privileges import check_storefront
from cdc.sinks.sql.bookkeeping import (
    ADDED_COLUMNS,
    applied_table,
    create_bookkeeping,
    ensure_lock_row,
    positions_of,
    row_state_table,
)
from cdc.sinks.sql.buffer import Encoded, KeyBuffer
from cdc.sinks.sql.folding import Folder
from cdc.sinks.sql.held_log import HeldLog
from cdc.sinks.sql.history import History
from cdc.sinks.sql.lookups import StoreLookups
from cdc.sinks.sql.mysql_merge import fast_form as mysql_fast_form
from cdc.sinks.sql.offsets import Offsets
from cdc.sinks.sql.schedules import Schedules
from cdc.sinks.sql.storefront import Storefront, classify
from cdc.sinks.sql.target import Target
from cdc.sinks.sql.writer import Writer
from cdc.stages import GuardStage, Stage, apply_stages

log = logging.getLogger("cdc.sink.sql")

DUE_REFRESH_S = 5.0  # how often the earliest scheduled time is re-read (an approval elsewhere may add one)


class SqlSink:
    def __init__(self, cfg: ConnectorConfig, metrics: Any = None):
        self.cfg = cfg
        self.scfg = cfg.sink
        self.name = cfg.name
        self.key_cols = tuple(cfg.sink.key)
        self.positions = positions_of(cfg)  # whose recorded key positions: a position group's, or its own
        self.shared = self.positions != self.name
        self.store = Storefront(self.scfg.url, self.name, self.scfg.bookkeeping_schema)
        self.target = Target(self.scfg, self.name, self.store.dialect)
        self.held = HeldLog(self.name, self.key_cols)
        self.schedules = Schedules(
            self.name, any(getattr(t, "type", None) == "schedule" for t in cfg.transforms), self.positions
        )
        self.history = History(self.scfg.history, self.target, self.name) if self.scfg.history else None
        self.buffer = KeyBuffer(self.key_cols, bool(self.history), self.scfg.truncate)
        self.lookups = StoreLookups(self.buffer, self.target, self.store)
        self.folder: Folder | None = None
        self.writer: Writer | None = None
        self.offsets: Offsets | None = None
        self.stages: list[Stage] = []
        self._due_checked = 0.0
        self._commit_job: tuple | None = None  # (future, floor) of the commit on the writer thread
        self._commit_ended = True

    # --- lifecycle ------------------------------------------------------------------------------------

    def open(self) -> None:
        store = self.store
        try:
            store.open()
            check_storefront(store.engine, self.cfg)  # the privileges, before the bookkeeping is made
            create_bookkeeping(store.engine)
            self.folder = Folder(store.engine, store.dialect, self.positions)
            self.writer = Writer(
                store,
                self.target,
                self.buffer,
                self.held,
                self.folder,
                self.lookups,
                self.schedules,
                self.history,
                self.positions,
                self.shared,
            )
            self.buffer.on_rename = self.writer.rename_row
            self.offsets = Offsets(store, self.writer)
            self._load_bookkeeping()
            self.target.reflect(store.engine)
            store.connect()
            self.writer.prepare()
        except Exception as e:
            self.close()
            raise classify(e) from e

    def _load_bookkeeping(self) -> None:
        with self.store.engine.begin() as c:
            insp = sa.inspect(c)
            for table, column, type_ in ADDED_COLUMNS:  # older tables
                if column not in {col["name"] for col in insp.get_columns(table)}:
                    c.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {type_}"))
            ensure_lock_row(c, self.name)
            self.held.load(c)
            self.schedules.load(c)
            a = applied_table
            self.folder.appended = (
                c.scalar(sa.select(sa.func.sum(a.c.size)).where(a.c.connector == self.positions)) or 0
            )

    def start_folding(self) -> None:
        """Folds recorded key positions on a thread of the sink's own (while `caught_up`, or a backlog)."""
        self.folder.start()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.folder is not None:
            self.folder.stop()
        self.store.close()

    # --- positions ------------------------------------------------------------------------------------

    def load_offsets(self) -> dict[str, str]:
        return self.offsets.load()

    def set_floor(self, floor: int | None) -> None:
        """Changes above this source position (commit LSN) need no never-backwards lookup: every position
        recorded for a key is at or below it. None: unknown, look every change up. (With shared positions the
        writer looks every change up anyway: Writer.may_be_stale.)"""
        self.writer.floor = floor

    def forget_offsets(self) -> None:
        self.offsets.forget()

    # --- the data path --------------------------------------------------------------------------------

    def add(self, ev: ChangeEvent) -> None:
        if self.buffer.encoded_with_rows() is not None:  # the fast path's rows came first: written first
            self.writer.write()
        self.buffer.add(ev)

    def encoded_rows(self, cols: list[str], lean: bool, expand, form: str = "") -> Encoded:
        """The fast path's buffer for rows of these storefront columns (cdc/fast/): the one open, or a new one
        once whatever else is buffered (changes, rows of another form) has been written, in order. `lean`:
        lines without positions, which go to `entries` (see lean_above); `form`: "pg-values" for
        PostgreSQL's VALUES tuples (short_form), "" for the connector's own form (fast_form)."""
        buffer = self.buffer
        enc = buffer.encoded
        if enc is not None and enc.cols == cols and (enc.entries is not None) == lean and enc.form == form:
            return enc
        if enc is not None or buffer.pending or buffer.truncate_first:
            self.writer.write()
        buffer.encoded = enc = Encoded(cols, expand, {} if lean else None, form=form)
        return enc

    def fast_form(self) -> tuple[str | None, str | None]:
        """(the form of the fast path's rows for this storefront, None) or (None, why it has none): "copy",
        PostgreSQL's staging COPY lines; "mysql" / "mysql-nbe", MariaDB's VALUES tuples (cdc/fast/plan.py)."""
        dialect = self.store.dialect
        if dialect == "postgresql":
            return "copy", None
        if dialect == "mysql":
            return mysql_fast_form(self.store.conn.connection.driver_connection)
        return None, f"the storefront is {dialect}"

    def short_form(self) -> str | None:
        """The form of the fast path's rows for short runs (the single sale), lean only: "pg-values" for a
        PostgreSQL storefront whose session parses string literals as written (standard_conforming_strings
        on: a backslash is itself), whose tuples go straight into the storefront table with the commit in one
        round trip (Offsets); None: short runs go the reference way."""
        if self.store.dialect != "postgresql":
            return None
        scs = self.store.conn.connection.driver_connection.info.parameter_status(
            "standard_conforming_strings"
        )
        return "pg-values" if scs == "on" else None

    def lean_above(self) -> int | None:
        """Changes of transactions committed above this source position may go as lean lines (their merge needs
        no never-backwards check: every recorded position is at or below it); None: none may (shared
        positions, or the floor unknown)."""
        writer = self.writer
        return None if writer.shared else writer.floor

    def hold(self, ev: ChangeEvent, err: HoldError, kind: str = "dead_letter") -> None:
        self.commit_end()  # (the held log is the commit's until it ends)
        self.held.hold(ev, err, kind)

    def write(self, fresh: bool = False) -> None:
        self.writer.write(fresh)

    def write_async(self) -> None:
        self.writer.write_async()

    def writer_idle(self) -> bool:
        return self.writer.idle()

    def commit(self, positions: dict[str, str] | None, floor: int | None = None) -> None:
        """Writes what is buffered, stores `positions` (partition -> text), and commits it all in one
        transaction. `floor`: the source position the stored positions cover (see set_floor)."""
        self.commit_end()  # (one commit at a time, in order)
        self.offsets.commit(positions)
        self._committed(floor)

    def commit_begin(self, positions: dict[str, str], floor: int | None = None) -> bool:
        """commit(positions, floor) on the writer thread, while the caller buffers the next batch (its changes
        go to a buffer of their own: what is committed was taken out first). Only when the caller has nothing
        to ask of the storefront connection meanwhile (the conditions of write_async), nothing is held in this
        batch, and the storefront is PostgreSQL or MariaDB/MySQL; else False, and nothing was done."""
        writer = self.writer
        if (
            not positions
            or self.store.dialect not in ("postgresql", "mysql")
            or not writer.overlaps
            or self.held.records
            or self.buffer.truncate_first
        ):
            return False
        self.commit_end()
        taken = writer.take()
        future = writer.submit(lambda: self.offsets.commit_taken(taken, positions))
        self._commit_job, self._commit_ended = (future, floor), False
        future.add_done_callback(self._ended)  # (at once, here, if it is done already)
        return True

    def _ended(self, future) -> None:
        """On the writer thread as a commit ends: commit_end is polled at every transaction end, and reads this
        flag, not the future's lock. (A future's callbacks run after result() has returned to a waiter: an
        earlier commit's may come after the next one began, and is ignored.)"""
        job = self._commit_job
        if job is not None and job[0] is future:
            self._commit_ended = True

    def commit_end(self, block: bool = True) -> bool:
        job = self._commit_job
        if job is None:
            return True
        future, floor = job
        if not block and not self._commit_ended:
            return False
        self._commit_job = None
        try:
            future.result()
        except Exception as e:
            raise classify(e) from e
        self._committed(floor)
        return True

    def _committed(self, floor: int | None) -> None:
        self.held.committed_now()
        writer = self.writer
        if floor is not None and writer.floor is not None:
            writer.floor = max(writer.floor, floor)

    def rollback(self) -> None:
        self._commit_job = None  # (its outcome unknown to the caller: its position is never confirmed)
        if self.writer is not None:
            self.writer.rolled_back()
        self.lookups.forget()
        self.buffer.clear()
        self.held.rolled_back()
        self.store.rollback()

    def drain_held(self) -> dict[str, int]:
        """Changes held (quarantine, dead letter) by committed transactions since the last call, by kind."""
        return self.held.drain()

    # --- hooks ----------------------------------------------------------------------------------------

    @property
    def caught_up(self) -> bool:
        return self.folder.caught_up

    @caught_up.setter
    def caught_up(self, value: bool) -> None:
        self.folder.caught_up = value

    def wire(self, stages: list[Stage]) -> None:
        """Gives the stages their lookups: a guard's max_change_pct compares with the storefront's current
        value (the sink's open transaction, so changes of this batch count), and so does a guard's allow when
        the storefront has the column. The stages are kept for
        scheduled prices, which run again from their schedule stage."""
        self.stages = stages
        for st in stages:
            if isinstance(st, GuardStage) and st.config.max_change_pct is not None:
                if self.target.table is not None and st.field not in self.target.c:
                    raise TerminalError(
                        f"transforms: {st.name}: max_change_pct compares {st.field} with the storefront's column "
                        f"{st.field}, which {self.scfg.table} does not have (place the guard where the field has "
                        "the storefront's name and units)"
                    )
                st.current = lambda row, f=st.field: self.lookups.current_value(f, row)
                self.writer.reads_between_writes = True  # keep writes synchronous
            elif isinstance(st, GuardStage) and st.config.allow:
                # who may change the field: without an old image, "changed" is judged against the storefront
                if self.target.table is None or st.field in self.target.c:
                    st.current = lambda row, f=st.field: self.lookups.current_value(f, row)
                    self.writer.reads_between_writes = True

    def prefetch(self, field: str, rows: list[dict[str, Any]]) -> None:
        self.commit_end()  # (the connection is the commit's until it ends)
        self.lookups.prefetch(field, rows)

    def current_value(self, field: str, row: dict[str, Any]) -> Any:
        self.commit_end()
        return self.lookups.current_value(field, row)

    def tick(self) -> None:
        """Applies the scheduled prices that are due, in a sink transaction of their own that moves no
        position (only called with nothing buffered)."""
        now = time.monotonic()
        if self.schedules.active and now - self._due_checked >= DUE_REFRESH_S:
            self._due_checked = now
            self.refresh_schedules()
        if self.schedules.is_due():
            self.commit_end()
            self.apply_due()

    def refresh_schedules(self) -> None:
        with self.store.engine.connect() as c:
            self.schedules.refresh(c)

    def apply_due(self) -> None:
        stages = self.stages
        names = [s.name for s in stages]
        try:
            conn = self.store.tx()
            self.writer.fold(conn)  # the keys' positions are read from cdc_row_state
            for r, ev in self.schedules.take_due(conn, names):
                try:
                    out = apply_stages(stages[names.index(r.stage) :], ev)
                    if out is not None:
                        self.add(out)
                except HoldError as e:
                    kind = getattr(e, "kind", "dead_letter")
                    self.hold(ev, e, kind)
                    log.warning(
                        "%s: scheduled %s for %s held (%s): %s", self.name, r.what, r.row_key, kind, e
                    )
                    continue
                log.info("%s: scheduled price %s for %s applied", self.name, r.what, r.row_key)
        except Exception as e:
            raise classify(e) from e
        self.write(fresh=True)
        self.commit(None)
        self.refresh_schedules()

    # --- for operators' tools (cdc quarantine / deadletter) ------------------------------------------

    def begin(self) -> sa.Connection:
        """The writing connection in a transaction holding the connector's lock (the connector waits)."""
        return self.store.tx()

    def key_position(self, conn: sa.Connection, row_key: str) -> tuple[int, int] | None:
        """The key's recorded source position (commit LSN, seq), folded first and locked for the rest of the
        transaction; None: never applied."""
        self.writer.fold(conn)
        rs = row_state_table
        state = conn.execute(
            sa.select(rs.c.commit_lsn, rs.c.seq)
            .where(rs.c.connector == self.positions, rs.c.row_key == row_key)
            .with_for_update()
        ).first()
        return None if state is None else (state.commit_lsn, state.seq)

    def refused_in_transaction(self) -> int:
        """Rows the storefront refused in the open transaction (dead-lettered by it)."""
        return self.held.uncommitted("dead_letter")

    # --- folding (see folding.py) -----------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        return self.folder.backlog

    def fold_step(self, limit: int) -> int:
        return self.folder.fold_step(limit)
