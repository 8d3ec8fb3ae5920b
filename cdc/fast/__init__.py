"""The fast path: a bulk transaction's inserts and updates from the POS's WAL to the storefront's staging
table without a Python object per change.

The reference path decodes each pgoutput message into a dict, wraps it in a ChangeEvent, runs it through the
stages, buffers it per key in the sink and turns it into a COPY row: a dozen steps per change. When the
connector's stages are among those that only move and round columns (rename, drop, money) and the storefront
is PostgreSQL without price history, this path fuses them: the source yields each run of a table's inserts and
updates as a `ChangeBatch` still in pgoutput's form (cdc/sources/pg_stream.py), a per-table plan says where
each column goes (plan.py), and one loop (encode.py, compiled when a compiler was there at install) writes
the staging table's COPY lines straight from the message bytes into the sink's buffer, the newest per key
(cdc/sinks/sql/buffer.py `Encoded`). The sink merges them by the same statement as any other write.

Nothing is decided differently here. A change the loop cannot encode exactly as the reference path would
(an old tuple, a TOASTed value, a NULL key, a money value that is not a finite number or does not fit) goes
the reference way, alone, in its place in the order; so do short runs (the single sale: the reference path has
its one-round-trip commit), a table whose plan cannot be made, and, when the storefront refuses a row or
a write must know each change (held keys to supersede), the whole buffered run (expanded from its batches).

`CDC_FAST_PATH=0` turns it off (for comparing; tests/integration/test_fast_path.py runs both).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from cdc.events import ChangeBatch
from cdc.fast.encode import encode_run
from cdc.fast.plan import FAST_STAGES, RelationPlan, plan_relation
from cdc.sinks.sql.buffer import KeyBuffer

log = logging.getLogger("cdc.fast")

MIN_RUN = 64  # changes: a shorter run goes the reference way (PgMerge.SMALL: its one-round-trip commit)


def fast_path(cfg: Any, stages: list, source: Any, sink: Any) -> FastPath | None:
    """The fast path for this connector, or None (and the reason, logged once) when it does not apply."""
    from cdc.sinks.sql.sink import SqlSink

    why = why_not(cfg, stages)
    if why is None and not (isinstance(sink, SqlSink) and sink.store.dialect == "postgresql"):
        why = "the storefront is not PostgreSQL"
    if why is None and not getattr(source, "batch_changes", lambda: False)():
        why = "the source does not give its changes in batches"
    if why is not None:
        log.info("%s: fast path off: %s", cfg.name, why)
        return None
    log.info("%s: fast path on for runs of inserts and updates", cfg.name)
    return FastPath(stages, sink)


def why_not(cfg: Any, stages: list) -> str | None:
    """Why the fast path cannot apply to this connector's config (None: it can); `cdc status` says it too."""
    if os.environ.get("CDC_FAST_PATH", "1") == "0":
        return "CDC_FAST_PATH=0"
    if cfg.source.type != "postgres":
        return f"the source is {cfg.source.type}"
    if cfg.source.row_filter:
        return "a lane (its rows leaving it become deletes change by change)"
    if cfg.sink.type != "sql" or not cfg.sink.url.split(":", 1)[0].startswith("postgresql"):
        return "the storefront is not PostgreSQL"
    if cfg.sink.history:
        return "price history records each change"
    for st in stages:
        if not isinstance(st, FAST_STAGES):
            return f"{st.name} needs each change as a row (the fast path takes rename, drop and money)"
    return None


class FastPath:
    def __init__(self, stages: list, sink: Any, min_run: int = MIN_RUN):
        self.stages = stages
        self.sink = sink
        self.min_run = min_run
        self._plans: dict[int, tuple[Any, RelationPlan | None]] = {}  # relation oid -> (Relation, plan)
        self.encoded = 0  # changes encoded (the rest went the reference way)

    def plan(self, rel: Any) -> RelationPlan | None:
        known = self._plans.get(rel.oid)
        if known is not None and known[0] is rel:
            return known[1]
        plan, why = plan_relation(rel, self.stages, self.sink.target)
        if self.sink.target.table is not None:  # (until the table is made, asked again)
            self._plans[rel.oid] = (rel, plan)
            if plan is None:
                log.info("fast path: %s.%s goes the reference way: %s", rel.schema, rel.name, why)
        return plan

    def push(self, batch: ChangeBatch, push_one) -> None:
        """A batch into the sink: encoded where it can be, the rest change by change through `push_one` (the
        runner's reference path), in order."""
        plan = self.plan(batch.relation) if len(batch) >= self.min_run else None
        if plan is None:
            for ev in batch.events():
                push_one(ev)
            return
        floor = self.sink.lean_above()
        lean = floor is not None and batch.commit_lsn > floor  # no never-backwards check: positions apart
        if lean:
            mid, tail = b'",%d,' % batch.commit_lsn, b',%d,%d,"u",null]' % (batch.ts_ms, batch.txid)
        else:
            mid, tail = b"\tu\t%d\t" % batch.commit_lsn, b"\t%d\t%d\t\\N\n" % (batch.ts_ms, batch.txid)
        payloads, lsns, n, i = batch.payloads, batch.lsns, len(batch), 0
        while i < n:
            enc = self.sink.encoded_rows(plan.cols, lean, self.expand)
            stop = encode_run(
                payloads, lsns, i, plan.ncols, plan.slots, plan.key_index, mid, tail, enc.lines, enc.entries
            )
            if stop > i:
                enc.add_span(batch, i, stop)
                self.encoded += stop - i
            if stop < n:
                for ev in batch.events(stop, stop + 1):
                    push_one(ev)
            i = stop + 1

    def expand(self, spans: list) -> list[tuple[tuple, Any]]:
        """Encoded spans as the reference path buffers them: (key, Pending), the newest per key, in order."""
        from cdc.stages import apply_stages

        buffer = KeyBuffer(self.sink.key_cols)
        for batch, start, stop in spans:
            for ev in batch.events(start, stop):
                out = apply_stages(self.stages, ev)  # (what was encoded passes every stage)
                if out is not None:
                    buffer.add(out)
        return list(buffer.pending.items())
