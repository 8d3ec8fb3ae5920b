"""The fast path: a bulk transaction's inserts and updates from the POS's WAL to the storefront's staging
table without a Python object per change.

The reference path decodes each pgoutput message into a dict, wraps it in a ChangeEvent, runs it through the
stages, buffers it per key in the sink and turns it into a COPY row: a dozen steps per change. When the
connector's stages are among those that only move and round columns (rename, drop, money) and the storefront
is PostgreSQL or MariaDB/MySQL without price history, this path fuses them: the source yields each run of a
table's inserts and updates as a `ChangeBatch` still in pgoutput's form (cdc/sources/pg_stream.py), a
per-table plan says where each column goes (plan.py), and one loop (compiled when a compiler was there at
install) writes the rows straight from the message bytes into the sink's buffer, the newest per key
(cdc/sinks/sql/buffer.py `Encoded`): for PostgreSQL the staging table's COPY lines (encode.py), which the sink
merges by the same statement as any other write; for MariaDB the VALUES tuples of its multi-row INSERT …
ON DUPLICATE KEY UPDATE (encode_mysql.py), the literals the reference path would send. Compiled, encode_c.py
writes the same lines byte by byte into a C buffer (with cbytes.py's C functions), and runs instead of both.

Runs shorter than MIN_RUN (the single sale) are encoded too, for a PostgreSQL storefront, when their lines
can be lean: as VALUES tuples ("pg-values", plan.py), which the sink upserts straight into the storefront
table and, when nothing else is to be written, commits with the position in one round trip
(PgMerge.commit_encoded); else they go the reference way (which has its own one-round-trip commit).

Nothing is decided differently here. A change the loop cannot encode exactly as the reference path would
(an old tuple, a TOASTed value, a NULL key, a money value that is not a finite number or does not fit) goes
the reference way, alone, in its place in the order; so do a table whose plan cannot be made, and, when the
storefront refuses a row or a write must know each change (held keys to supersede), the whole buffered run
(expanded from its batches).
For MariaDB, so does a run at or below the stored source position (a replay: the reference path checks each
key's recorded position; its rows have no form that carries the position to the merge).

`CDC_FAST_PATH=0` turns it off (for comparing; tests/integration/test_fast_path.py runs both).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from cdc.events import ChangeBatch
from cdc.fast import encode_c
from cdc.fast.plan import FAST_STAGES, FORMS, RelationPlan, plan_relation
from cdc.sinks.sql.buffer import KeyBuffer

log = logging.getLogger("cdc.fast")

MIN_RUN = 64  # changes: a shorter run goes as the short form's tuples (lean), or the reference way
# messages an encoder call: a compiled call holds the GIL throughout, and Python hands it over only between
# calls, so the sink's writer thread, its storefront's reply in, waits this long (~0.3 ms) at most past the
# switch interval (cdc.cli.tune_threads); a whole batch (RUN_MAX, 2000) took ~3 ms, the server idle meanwhile
STEP = 256


def fast_path(cfg: Any, stages: list, source: Any, sink: Any) -> FastPath | None:
    """The fast path for this connector, or None (and the reason, logged once) when it does not apply."""
    from cdc.sinks.sql.sink import SqlSink

    why, form = why_not(cfg, stages), None
    if why is None and not isinstance(sink, SqlSink):
        why = "the sink is not a SQL storefront"
    if why is None:
        form, why = sink.fast_form()
    short = sink.short_form() if why is None else None
    if why is None and not source.batch_changes(1 if short else MIN_RUN):
        why = "the source does not give its changes in batches"
    if why is not None:
        log.info("%s: fast path off: %s", cfg.name, why)
        return None
    log.info(
        "%s: fast path on for runs of inserts and updates (%s rows); for runs shorter than %d: %s",
        cfg.name,
        form,
        MIN_RUN,
        f"lean {short} rows" if short else "the reference way",
    )
    return FastPath(stages, sink, form=form, short_form=short)


def why_not(cfg: Any, stages: list) -> str | None:
    """Why the fast path cannot apply to this connector's config (None: it can); `cdc status` says it too."""
    if os.environ.get("CDC_FAST_PATH", "1") == "0":
        return "CDC_FAST_PATH=0"
    if cfg.source.type != "postgres":
        return f"the source is {cfg.source.type}"
    if cfg.source.row_filter:
        return "a lane (its rows leaving it become deletes change by change)"
    backend = _backend(cfg.sink.url) if cfg.sink.type == "sql" else ""
    if backend not in ("postgresql", "mysql", "mariadb"):
        return "the storefront is not PostgreSQL or MariaDB/MySQL"
    if backend != "postgresql" and cfg.sink.position_group:
        return "sink.position_group with a MariaDB storefront (each change claims its key's position)"
    if cfg.sink.history:
        return "price history records each change"
    for st in stages:
        if not isinstance(st, FAST_STAGES):
            return f"{st.name} needs each change as a row (the fast path takes rename, drop and money)"
    return None


def _backend(url: str) -> str:
    """The database a SQLAlchemy URL names ("postgresql" for postgresql+psycopg://...); "" if unreadable (the
    config's own check says why)."""
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return ""


class FastPath:
    def __init__(
        self,
        stages: list,
        sink: Any,
        min_run: int = MIN_RUN,
        form: str = "copy",
        step: int = STEP,
        short_form: str | None = None,
    ):
        if form not in FORMS:
            raise ValueError(f"fast path: no rows of form {form!r}")
        self.stages = stages
        self.sink = sink
        self.min_run = min_run
        self.step = step  # messages an encoder call
        self.form = form
        self.copy = form == "copy"  # else MariaDB's VALUES tuples, lean only
        self.encode_run = encode_c.encode_run if self.copy else encode_c.encode_run_mysql
        self.short_form = short_form  # short runs' form (lean only), or None: the reference way
        self._plans: dict[tuple, tuple[Any, RelationPlan | None]] = {}  # (oid, form) -> (Relation, plan)
        self.encoded = 0  # changes encoded (the rest went the reference way)

    def plan(self, rel: Any, form: str = "") -> RelationPlan | None:
        """The relation's plan for rows of `form` ("": the connector's own; "pg-values": short runs')."""
        known = self._plans.get((rel.oid, form))
        if known is not None and known[0] is rel:
            return known[1]
        plan, why = plan_relation(rel, self.stages, self.sink.target, form or self.form)
        if self.sink.target.table is not None:  # (until the table is made, asked again)
            self._plans[(rel.oid, form)] = (rel, plan)
            if plan is None:
                name, form = f"{rel.schema}.{rel.name}", form or self.form
                log.info("fast path: %s goes the reference way for %s rows: %s", name, form, why)
        return plan

    def push(self, batch: ChangeBatch, push_one) -> None:
        """A batch into the sink: encoded where it can be, the rest change by change through `push_one` (the
        runner's reference path), in order. A run shorter than min_run goes as the short form's tuples when
        the sink has one and the lines can be lean, else the reference way."""
        floor = self.sink.lean_above()
        lean = floor is not None and batch.commit_lsn > floor  # no never-backwards check: positions apart
        form, encode_run = "", self.encode_run
        if len(batch) >= self.min_run:
            plan = self.plan(batch.relation)
        elif lean and self.short_form is not None:
            form, encode_run = self.short_form, encode_c.encode_run_mysql
            plan = self.plan(batch.relation, form)
        else:
            plan = None
        if plan is None or not (lean or self.copy):
            for ev in batch.events():
                push_one(ev)
            return
        if lean:
            mid, tail = b'",%d,' % batch.commit_lsn, b',%d,%d,"u",null]' % (batch.ts_ms, batch.txid)
        else:
            mid, tail = b"\tu\t%d\t" % batch.commit_lsn, b"\t%d\t%d\t\\N\n" % (batch.ts_ms, batch.txid)
        payloads, lsns, n, i = batch.payloads, batch.lsns, len(batch), 0
        while i < n:
            enc = self.sink.encoded_rows(plan.cols, lean, self.expand, form)
            rest = (plan.ncols, plan.slots, plan.key_index, mid, tail, enc.lines, enc.entries)
            start = i
            while i < n:  # `step` messages a call (the whole batch, unsliced, when it is that short)
                end = min(n, i + self.step)
                if i == 0 and end == n:
                    i = encode_run(payloads, lsns, 0, *rest)
                else:
                    i += encode_run(payloads[i:end], lsns[i:end], 0, *rest)
                if i < end:
                    break
            if i > start:
                enc.add_span(batch, start, i)
                self.encoded += i - start
            if i < n:  # a message it could not encode: the reference way, in its place
                for ev in batch.events(i, i + 1):
                    push_one(ev)
                i += 1

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
