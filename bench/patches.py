"""Experimental monkeypatches of cdc/, applied only inside the benchmark's connector process, to measure what a
proposed change to cdc/ would buy before anyone makes it. Nothing here is used by pos-cdc itself.

    python bench/run.py --patch idle-drain --patch rename-fast ...

idle-drain   The source yields Idle (and so the pipeline commits a batch) whenever libpq's input buffer is
             empty, i.e. after every socket read (~100 single-row transactions) even when the socket has more
             data waiting. Patched: when the buffer is empty, poll the socket without waiting and read on if
             data is there, so Idle means "nothing more has arrived".
rename-fast  RenameStage._rename with the renamed names cached per column tuple and zip(). (Measured: no
             gain; the stage costs ~1 µs/change, the profilers overstated it. Kept as a record.)
count-batch  Pipeline._count increments a prometheus Counter (a lock and several calls) per change. Patched:
             count in a plain dict and flush to the Counter at each checkpoint.
no-hashjoin  The merge's never-backwards check (stage LEFT JOIN cdc_row_state) is planned as a hash join that
             seq-scans ALL of cdc_row_state for every batch: O(rows ever applied) per batch (EXPLAIN: 289 ms
             per 20k-row batch at 1M recorded keys, 27 ms with index probes). Patched: the sink session runs
             SET enable_hashjoin = off, enable_mergejoin = off (index nested loop).
gc-tune      The cyclic garbage collector runs every 700 container allocations and, with ~20k buffered
             changes (dicts, events, Pending) alive, its older generations get expensive. Patched:
             gc.freeze() after start-up and gc.set_threshold(50_000, 20, 100).
"""

from __future__ import annotations

import select


def idle_drain() -> None:
    from cdc.sources import postgres

    class DrainingConn:
        """A PGconn whose get_copy_data(async) reads on from the socket before reporting 'nothing buffered'."""

        __slots__ = ("_c",)

        def __init__(self, conn):
            object.__setattr__(self, "_c", conn)

        def get_copy_data(self, async_: int):
            c = self._c
            n, data = c.get_copy_data(async_)
            while n == 0:
                r, _, _ = select.select([c.socket], [], [], 0)
                if not r:
                    break
                c.consume_input()
                n, data = c.get_copy_data(async_)
            return n, data

        def __getattr__(self, name):
            return getattr(self._c, name)

        def __setattr__(self, name, value):
            setattr(self._c, name, value)

    original = postgres.PostgresSource._open_replication

    def _open_replication(self):
        return DrainingConn(original(self))

    postgres.PostgresSource._open_replication = _open_replication


def rename_fast() -> None:
    from cdc.stages import rename

    original = rename.RenameStage._rename

    def _rename(self, row: dict, which: str, ev):
        cache = self.__dict__.setdefault("_names_cache", {})
        names = tuple(row)
        new = cache.get(names)
        if new is None:
            out = original(self, row, which, ev)  # validates (collisions raise HoldError)
            cache[names] = tuple(out)
            return out
        return dict(zip(new, row.values(), strict=True))

    rename.RenameStage._rename = _rename


def count_batch() -> None:
    from cdc import pipeline

    def _count(self, ev) -> None:
        pend = self.__dict__.setdefault("_pending_counts", {})
        key = (ev.schema, ev.table, ev.op)
        pend[key] = pend.get(key, 0) + 1

    original_checkpoint = pipeline.Pipeline._checkpoint

    def _checkpoint(self, end) -> None:
        original_checkpoint(self, end)
        pend = self.__dict__.get("_pending_counts")
        if pend:
            for (schema, table, op), n in pend.items():
                self.metrics.events.labels(self.cfg.name, f"{schema}.{table}", op).inc(n)
            pend.clear()

    pipeline.Pipeline._count = _count
    pipeline.Pipeline._checkpoint = _checkpoint


def no_hashjoin() -> None:
    from cdc.sinks import sql

    original = sql.SqlSink.open

    def open_(self) -> None:
        original(self)
        if self.dialect == "postgresql":
            pg = self.conn.connection.driver_connection
            pg.execute("SET enable_hashjoin = off")
            pg.execute("SET enable_mergejoin = off")
            pg.commit()

    sql.SqlSink.open = open_


def gc_tune() -> None:
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


PATCHES = {
    "idle-drain": idle_drain,
    "rename-fast": rename_fast,
    "count-batch": count_batch,
    "gc-tune": gc_tune,
    "no-hashjoin": no_hashjoin,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
