"""Folding recorded key positions (cdc_applied) into cdc_row_state, on a thread of the sink's own.

Every write appends the positions of the keys it applied to cdc_applied (cheap: one JSON row per chunk). They
must reach cdc_row_state before anything reads it (the writer folds everything first when a change may be
stale, inside its transaction), and meanwhile they are folded here a step at a time: while the connector is
caught up, or while more than FOLD_BACKLOG wait (a bulk load is not slowed by folding, nor the stream made to
wait for it).
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from cdc.errors import CdcError
from cdc.sinks.sql.bookkeeping import fold
from cdc.sinks.sql.storefront import classify

log = logging.getLogger("cdc.sink.sql")

FOLD_STEP = 10_000
FOLD_EVERY_S = 0.5
FOLD_BACKLOG = 500_000
FOLD_JOIN_S = 10.0  # how long a stop waits for a fold step to finish


class Folder:
    """`appended`: cdc_applied entries this sink appended (with those found at open); `folded`: how many of
    them fold_step folded. Written by the writing thread and the folding thread respectively."""

    def __init__(self, engine: sa.Engine, dialect: str, connector: str):
        self.engine = engine
        self.dialect = dialect
        self.connector = connector
        self.appended = 0
        self.folded = 0
        self.caught_up = False  # set by the sink's owner: nothing waits at the source
        self._conn: sa.Connection | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def backlog(self) -> int:
        """About how many recorded positions wait to be folded (fold_step's trigger)."""
        return max(0, self.appended - self.folded)

    def fold_step(self, limit: int) -> int:
        """Folds the oldest ~`limit` recorded positions into cdc_row_state, on a connection and in a
        transaction of its own, so it may run on another thread while the sink writes: ids only grow with
        the connector's commits, so what it sees is a committed prefix, and folds commute (the newest
        position per key wins, keys locked in order). It gives up at once on a row lock the writer holds
        (lock timeout) and is tried again later. Returns how many it folded."""
        start = self.appended
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
                if self.dialect == "mysql":  # no gap locks in the writer's way
                    self._conn = self._conn.execution_options(isolation_level="READ COMMITTED")
                elif self.dialect == "sqlite":  # one writer at a time: wait briefly, then try later
                    self._conn.connection.driver_connection.execute("PRAGMA busy_timeout = 200")
            conn = self._conn
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
                elif self.dialect == "mysql":
                    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                done = fold(conn, self.connector, limit)
        except Exception as e:
            self.close_connection()
            raise classify(e) from e
        self.folded = start if done < limit else self.folded + done  # less than asked: all folded
        return done

    def start(self) -> None:
        self._stop = threading.Event()  # its own for each thread
        self._thread = threading.Thread(
            target=self._loop, args=(self._stop,), daemon=True, name=f"{self.connector}-fold"
        )
        self._thread.start()

    def _loop(self, stop: threading.Event) -> None:
        """A failed step is tried again at the next look; the stream reports real outages."""
        failures = 0
        while not stop.wait(FOLD_EVERY_S):
            try:
                while self.backlog and (self.caught_up or self.backlog > FOLD_BACKLOG):
                    if self.fold_step(FOLD_STEP) < FOLD_STEP or stop.is_set():
                        break
                failures = 0
            except CdcError as e:
                failures += 1
                (log.warning if failures % 20 == 1 else log.debug)(
                    "%s: folding recorded key positions: %s (will try again)", self.connector, e
                )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(FOLD_JOIN_S)  # a step stuck on an unreachable storefront is left behind
            if self._thread.is_alive():
                log.warning("%s: the folding thread did not stop; leaving it behind", self.connector)
            self._thread = None
        self.close_connection()

    def close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection; the next step opens another
                pass
