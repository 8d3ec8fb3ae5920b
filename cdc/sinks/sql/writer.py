"""Writing what the SQL sink buffered, inside its open transaction (the commit is offsets.py's).

One write: a source TRUNCATE first (the table emptied, what was held before it superseded), then the buffered
changes in groups of the same columns, each merged by the dialect's strategy under a savepoint; a group the
database refuses is bisected down to the rows that cause it, which are dead-lettered with the database's error
while the rest is applied. Then, in the same transaction: the held changes, older quarantined changes of the
applied keys superseded, scheduled prices and price history.

Never backwards: every applied key's source position is appended to cdc_applied by the merge and folded into
cdc_row_state (bookkeeping.fold) before anything reads it. Changes above the floor (the highest source position
ever stored, which every recorded position is at or below) need no check at all — the streaming case. A
"fresh" write (a scheduled price, or an approval, whose caller checked the key's position under the lock)
skips the check too.

A write may run on a writer thread (`write_async`) while the caller goes on buffering, when nothing else needs
the connection between writes; the next write, commit or rollback waits for it and re-raises its error.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import sqlalchemy as sa

from cdc.errors import HoldError
from cdc.events import REFUSAL_HINT
from cdc.sinks.sql.bookkeeping import applied_table, fold, key_text, row_state_table, scheduled_table, utcnow
from cdc.sinks.sql.buffer import UPSERT, KeyBuffer, Pending
from cdc.sinks.sql.core_merge import CoreMerge
from cdc.sinks.sql.folding import Folder
from cdc.sinks.sql.held_log import HeldLog
from cdc.sinks.sql.history import History
from cdc.sinks.sql.lookups import StoreLookups
from cdc.sinks.sql.mysql_merge import MySqlMerge
from cdc.sinks.sql.pg_merge import PgMerge
from cdc.sinks.sql.schedules import Schedules
from cdc.sinks.sql.storefront import Storefront, classify, first_line, is_row_error
from cdc.sinks.sql.target import Target

log = logging.getLogger("cdc.sink.sql")

SEND_WAIT_S = 0.05  # write_async waits at most this long for a MariaDB write's first statement to go


class Writer:
    def __init__(
        self,
        store: Storefront,
        target: Target,
        buffer: KeyBuffer,
        held: HeldLog,
        folder: Folder,
        lookups: StoreLookups,
        schedules: Schedules,
        history: History | None,
        positions: str | None = None,
        shared: bool = False,
    ):
        self.store = store
        self.target = target
        self.buffer = buffer
        self.held = held
        self.folder = folder
        self.lookups = lookups
        self.schedules = schedules
        self.history = history
        self.connector = store.connector
        self.positions = positions or store.connector  # whose recorded key positions (sink.position_group)
        # lanes write the same keys: every change claims its key's position (never a floor)
        self.shared = shared
        self.merger: PgMerge | CoreMerge | None = None
        self.floor: int | None = None  # the stored source position (commit LSN) once loaded; see may_be_stale
        self.reads_between_writes = False  # set when stages read the storefront through the sink (guard)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.connector}-sink")
        self._inflight: Future | None = None
        self._sent = threading.Event()  # the write in flight has its first statement at the server (MariaDB)

    def prepare(self) -> None:
        """The dialect's merge strategy, ready on the writing connection (once the table exists)."""
        self.merger = {"postgresql": PgMerge, "mysql": MySqlMerge}.get(self.target.dialect, CoreMerge)(
            self.target, self.connector, self.positions, self.shared
        )
        if isinstance(self.merger, MySqlMerge):
            self.merger.sending = self._sent.set
        if self.target.table is not None:
            self.merger.prepare(self.store.conn)

    @property
    def tracks_applied(self) -> bool:
        """Whether a write must learn which changes it applied (history, superseding, schedules)."""
        return bool(self.history or self.held.held_keys or self.schedules.tracking)

    @property
    def overlaps(self) -> bool:
        """Whether writes and commits may run on the writer thread while the caller goes on buffering: nothing
        needs the connection between them (guard lookups, history, schedules, held keys), and the table
        exists."""
        return not (self.reads_between_writes or self.tracks_applied or self.target.table is None)

    # --- writing now, or on the writer thread ---------------------------------------------------------

    def write(self, fresh: bool = False) -> None:
        """Sends the buffered changes inside the open transaction (no commit). `fresh`: the caller made sure
        no newer change has been applied for these keys (the never-backwards check is skipped)."""
        try:
            self.wait()
            self._write_taken(self.take(), fresh)
        except Exception as e:
            raise classify(e) from e

    def write_async(self) -> None:
        """Like write(), but the database work runs on the writer thread while the caller goes on buffering
        (the storefront merges one batch while the next is decoded). Only when nothing else needs the
        connection between writes (no guard lookups, history, schedules or held keys)."""
        if not self.overlaps:
            self.write()
            return
        self.wait()
        taken = self.take()
        self.store.tx()  # begun on this thread; the writer only adds statements to it
        self._sent.clear()
        self._inflight = self._pool.submit(self._write_taken, taken, False)
        if isinstance(self.merger, MySqlMerge):
            # until the write's first statement is at the server: the writer's steps up to it (a savepoint, the
            # statement's text, its thread) need the GIL, which this thread's next encoding would hold from
            # them a switch interval at a time (~10 ms a write: a tenth of a 20k-row write, the server idle)
            self._sent.wait(SEND_WAIT_S)

    def idle(self) -> bool:
        """Whether write_async() would overlap the caller and start at once (no write or commit running)."""
        job = self._inflight
        return (job is None or job.done()) and self.overlaps

    def wait(self) -> None:
        job, self._inflight = self._inflight, None
        if job is not None:
            try:
                job.result()
            except Exception as e:
                raise classify(e) from e

    def rolled_back(self) -> None:
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - rolling back anyway
            pass
        if self.merger is not None:
            self.merger.forget_stage()

    def close(self) -> None:
        try:
            self.wait()
        except Exception:  # noqa: BLE001 - closing; the error was or will be reported by the caller
            pass
        self._pool.shutdown(wait=True)

    def take(self) -> tuple:
        """What is buffered and held, taken out (the buffer starts anew) for write_taken."""
        pending, truncate_first, encoded = self.buffer.take()
        return pending, self.held.take(), truncate_first, encoded

    def write_taken(self, taken: tuple) -> None:
        """Sends what take() took, on the calling thread (the commit's, see Offsets.commit_taken)."""
        self._write_taken(taken, False)

    def submit(self, job) -> Future:
        """Runs `job` on the writer thread, after whatever runs there; the next write, commit or rollback
        waits for it and re-raises its error (as for write_async)."""
        self.wait()
        self._inflight = job = self._pool.submit(job)
        return job

    def rename_row(self, old: tuple, new: tuple) -> None:
        """Moves the stored row from key `old` to `new` in place (a key change whose unchanged TOAST values
        were not sent); what is buffered goes first, so the order of changes holds."""
        self.write()
        if self.target.table is None:
            return
        t, kc = self.target.table, self.target.key_cols
        try:
            conn = self.store.tx()
            self.store.untouched = False
            conn.execute(
                t.update()
                .where(sa.and_(*(t.c[k] == v for k, v in zip(kc, old, strict=True))))
                .values(dict(zip(kc, new, strict=True)))
            )
        except Exception as e:
            raise classify(e) from e

    # --- one write ------------------------------------------------------------------------------------

    def _write_taken(self, taken: tuple, fresh: bool) -> None:
        try:
            self._write_taken_now(taken, fresh)
        finally:
            self._sent.set()  # (a write that sent nothing, or failed first)

    def _write_taken_now(self, taken: tuple, fresh: bool) -> None:
        pending, held, truncate_first, encoded = taken
        store = self.store
        conn = store.tx()
        self.lookups.forget()  # what is written changes what was read
        if truncate_first:
            store.untouched = False
            self._truncate(conn)
        refused: dict[tuple, dict] = {}  # key -> its dead-letter record
        if encoded is not None:
            if self.tracks_applied or self.target.table is None:  # each change must be known: the usual way
                pending = dict(encoded.expand(encoded.spans))
            else:
                self._apply_encoded(conn, encoded, fresh, refused)
        applied: list[tuple[str, Pending]] = []
        old_rows: dict[str, dict] = {}
        if pending and self.target.table is None:
            first = next((p.row for p in pending.values() if p.op == UPSERT), None)
            if first is None:
                pending = {}  # only deletes, of rows a table that does not exist yet cannot have
            else:
                self.target.create(store.engine, first)
                self.prepare()
                conn = store.tx()
        if pending:
            items = list(pending.items())
            self.target.fill_unsent(conn, items)
            if self.history:
                old_rows = self.history.old_rows(conn, items)
            for cols, group in self.target.groups(items):
                alone, store.untouched = store.untouched, False
                self._apply(conn, group, cols, fresh, refused, alone)
            if self.tracks_applied:
                applied = self._applied(conn, items, fresh, refused)
        held = held + list(refused.values())
        self.held.insert(conn, held)
        if truncate_first:
            self.held.before_truncate(conn, truncate_first)
        if applied:
            now = utcnow()
            if self.held.held_keys:
                self.held.supersede(conn, applied, now)
            if self.schedules.tracking:
                self.schedules.record(conn, applied, now)
            if self.history:
                again = not fresh and self.may_be_stale([(None, p) for _, p in applied])
                self.history.record(conn, applied, old_rows, now, again=again)

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
        check_stale = not fresh and self.may_be_stale(items)
        if check_stale:
            self.fold(conn)
        if alone and not check_stale:
            try:
                self.merger.merge(conn, items, cols, check_stale=False)
                self.folder.appended += len(items)
                return
            except Exception as e:
                if not is_row_error(e):
                    raise
                conn.rollback()
                self.merger.forget_stage()
                conn = self.store.tx()
                self.store.untouched = False  # this group is written below: the next ones need savepoints
        try:
            with conn.begin_nested():
                self.merger.merge(conn, items, cols, check_stale=check_stale)
            self.folder.appended += len(items)
        except Exception as e:
            if not is_row_error(e):
                raise
            if len(items) > 1:
                mid = len(items) // 2
                self._apply(conn, items[:mid], cols, fresh, refused)
                self._apply(conn, items[mid:], cols, fresh, refused)
                return
            key, p = items[0]
            message = first_line(getattr(e, "orig", None) or e)
            log.warning("%s: storefront refused a row, dead-lettered: %s", self.connector, message)
            reason = f"the storefront database refused the row: {message}"
            if p.ev.headers.get(REFUSAL_HINT):
                reason += f" ({p.ev.headers[REFUSAL_HINT]})"
            refused[key] = self.held.record(p.ev, HoldError(reason, rule="sink.write"))

    def _apply_encoded(self, conn: sa.Connection, encoded, fresh: bool, refused: dict) -> None:
        """The fast path's rows (buffer.Encoded) merged under a savepoint (PostgreSQL: one COPY; MariaDB: the
        multi-row upserts); if the storefront refuses a row, the same changes go the usual way (expanded
        from their batches), which finds the refused rows and dead-letters them."""
        floor = self.floor
        check_stale = not fresh and (floor is None or self.shared or encoded.min_commit_lsn <= floor)
        if check_stale:
            if encoded.entries is not None:  # (lean lines were above the stored position when encoded)
                raise AssertionError("lean fast-path rows at or below the stored position")
            self.fold(conn)
        self.store.untouched = False
        n = len(encoded.lines)
        try:
            with conn.begin_nested():
                self.merger.merge_encoded(conn, encoded, check_stale)
            self.folder.appended += n
        except Exception as e:
            if not is_row_error(e):
                raise
            items = encoded.expand(encoded.spans)
            self.target.fill_unsent(conn, items)
            for cols, group in self.target.groups(items):
                self._apply(conn, group, cols, fresh, refused)

    def may_be_stale(self, items: list) -> bool:
        """Whether any change could be older than a row's recorded position. Every recorded position is at or
        below the stored source position (they commit together), so changes above it need no lookup. Not so
        with shared positions: another lane may have recorded any position."""
        if self.floor is None or self.shared:
            return True
        floor = self.floor
        return any(p.ev.commit_lsn <= floor for _, p in items)

    def fold(self, conn: sa.Connection) -> None:
        """All recorded positions into cdc_row_state, inside the open transaction (before reading it)."""
        self.store.untouched = False
        fold(conn, self.positions)

    def _applied(self, conn: sa.Connection, items: list, fresh: bool, refused: dict) -> list:
        """(key text, change) of the changes this write applied: all but the refused ones, unless some may
        have been skipped as older than their row (a replay), which the rows' recorded positions tell."""
        out = [(key_text(k), p) for k, p in items if k not in refused]
        if fresh or not self.may_be_stale(items):
            return out
        self.fold(conn)
        rs, state = row_state_table, {}
        for i in range(0, len(out), 500):
            chunk = [kt for kt, _ in out[i : i + 500]]
            q = sa.select(rs.c.row_key, rs.c.commit_lsn, rs.c.seq, rs.c.op)
            for kt, lsn, seq, op in conn.execute(
                q.where(rs.c.connector == self.positions, rs.c.row_key.in_(chunk))
            ):
                state[kt] = (lsn, seq, op)
        return [(kt, p) for kt, p in out if state.get(kt) == (p.ev.commit_lsn, p.ev.seq, p.op)]

    def _truncate(self, conn: sa.Connection) -> None:
        table = self.target.table
        if table is None:
            return
        soft = self.target.soft_delete_column
        if soft:
            col = table.c[soft]
            conn.execute(table.update().where(col.is_(None)).values({col: utcnow()}))
        else:
            conn.execute(table.delete())
        for t in (row_state_table, applied_table):
            conn.execute(t.delete().where(t.c.connector == self.positions))
        conn.execute(scheduled_table.delete().where(scheduled_table.c.connector == self.connector))
        self.schedules.forget()
