"""Experimental monkeypatches of cdc/, applied only inside the benchmark's connector process, to measure what a
proposed change to cdc/ would buy before anyone makes it. Nothing here is used by pos-cdc itself. (Patches that
were measured and then made in cdc/ are gone: the Idle drain, per-batch event counting, the GC tuning, the
0.5 ms switch interval, which `cdc run` sets with the fast path's encoder calls of STEP messages: cdc.cli.tune_threads.)

    python bench/run.py --patch gc-off --patch rename-fast ...

rename-fast  RenameStage._rename with the renamed names cached per column tuple and zip(). (Measured: no
             gain; the stage costs ~1 µs/change, the profilers overstated it. Kept as a record.)
no-hashjoin  The merge's never-backwards check (stage LEFT JOIN cdc_row_state) is planned as a hash join that
             seq-scans ALL of cdc_row_state for every batch: O(rows ever applied) per batch (EXPLAIN: 289 ms
             per 20k-row batch at 1M recorded keys, 27 ms with index probes). Patched: the sink session runs
             SET enable_hashjoin = off, enable_mergejoin = off (index nested loop).
no-fold      Recorded key positions are never folded into cdc_row_state while the connector runs: what the
             idle folding costs the latency.
gc-off       No cyclic garbage collection at all: how much the collector still costs with `cdc run`'s tuning.
timeline     Not a change: logs (stderr, logger bench.timeline) when each sink write and commit starts and ends
             and each ChangeBatch arrives, in ms since the first batch, to see what waits for what.
switch-250us, switch-500us, switch-1ms
             The thread switch interval `cdc run` sets (cdc.cli.SWITCH_INTERVAL_S, 0.5 ms). (Measured
             2026-12-05 on the ladder at 13,000-14,000 TPS, one noisy run each: 0.25 ms p99 216/569 ms, 0.5 ms
             172/173, 1 ms 372/1113; 0.1 and 2 ms were worse still, 2 ms falling behind. 0.5 ms stays.)

A patched connector runs under bench/profile_connector.py, which tunes the process as `cdc run` does (since
2026-12-05; before, patched runs had Python's default GC thresholds and 5 ms switch interval).
"""

from __future__ import annotations


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


def no_hashjoin() -> None:
    from cdc.sinks.sql import sink

    original = sink.SqlSink.open

    def open_(self) -> None:
        original(self)
        if self.store.dialect == "postgresql":
            pg = self.store.conn.connection.driver_connection
            pg.execute("SET enable_hashjoin = off")
            pg.execute("SET enable_mergejoin = off")
            pg.commit()

    sink.SqlSink.open = open_


def gc_off() -> None:
    import gc

    gc.disable()


def no_fold() -> None:
    from cdc.sinks.sql import folding

    folding.FOLD_STEP = folding.FOLD_BACKLOG = 10**12
    folding.FOLD_EVERY_S = 10**9


def timeline() -> None:
    import logging
    import time

    from cdc import pipeline
    from cdc.sinks.sql import offsets, writer

    log = logging.getLogger("bench.timeline")
    t0 = [0.0]

    def ms() -> str:
        if not t0[0]:
            t0[0] = time.monotonic()
        return f"{(time.monotonic() - t0[0]) * 1000:8.1f}"

    def wrap(cls, name: str, what) -> None:
        original = getattr(cls, name)

        def timed(self, *a, **kw):
            start = ms()
            try:
                return original(self, *a, **kw)
            finally:
                log.warning("timeline %s-%s %s %s", start, ms(), name, what(self, *a))

        setattr(cls, name, timed)

    wrap(
        writer.Writer,
        "_write_taken",
        lambda self, taken, *_: f"{len(taken[0])} changes, encoded {len(taken[3].lines) if taken[3] else 0}",
    )
    wrap(offsets.Offsets, "commit", lambda *_: "")
    wrap(
        offsets.Offsets,
        "commit_taken",
        lambda self, taken, *_: f"{len(taken[0])} changes, encoded {len(taken[3].lines) if taken[3] else 0}",
    )
    original_count = pipeline.Pipeline._count_batch

    def count_batch(self, batch):
        if len(batch) and batch.lsns[0] % 50 == 0:
            log.warning("timeline %s batch of %d", ms(), len(batch))
        return original_count(self, batch)

    pipeline.Pipeline._count_batch = count_batch


def switch(seconds: float):
    def patch() -> None:
        import cdc.cli

        cdc.cli.SWITCH_INTERVAL_S = seconds

    return patch


PATCHES = {
    "switch-250us": switch(0.00025),
    "switch-500us": switch(0.0005),
    "switch-1ms": switch(0.001),
    "timeline": timeline,
    "no-fold": no_fold,
    "gc-off": gc_off,
    "rename-fast": rename_fast,
    "no-hashjoin": no_hashjoin,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
