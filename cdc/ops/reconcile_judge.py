"""One storefront key of `cdc reconcile` (cdc/ops/reconcile.py): its POS rows through the connector's stages,
judged against the storefront row — held, filtered, ambiguous, or a candidate (missing, extra, different) for
cdc/ops/reconcile_repair.py to sort out."""

from __future__ import annotations

from typing import Any

from cdc.errors import CdcError, HoldError
from cdc.events import READ, ChangeEvent
from cdc.ops.chunks import differing_columns
from cdc.ops.reconcile_repair import Candidate
from cdc.ops.reconcile_sides import PosSnapshot, SourceTable
from cdc.sinks.sql.bookkeeping import key_text
from cdc.sources.pg_snapshot import typed_row
from cdc.stages import PickStage, apply_stages
from cdc.stages.lineage import source_column


class Judge:
    """One storefront key: its POS rows through the stages, against the storefront row."""

    def __init__(self, run, pos: PosSnapshot):
        self.run = run
        self.pos = pos
        self.report = run.report
        self.key_cols = tuple(run.cfg.sink.key)
        self.soft = run.sink.target.soft_delete_column
        self.target_cols = run.target_cols
        history = run.cfg.sink.history
        self.changed_by = history.changed_by if history else None
        stages = run.stages
        self.stages = stages
        self.pick_at = next(
            (
                i
                for i, s in enumerate(stages)
                if isinstance(s, PickStage) and s.config.fallback_store is not None
            ),
            None,
        )
        if self.pick_at is not None:
            configs = [s.config for s in stages[: self.pick_at]]
            self.store_src = source_column(configs, stages[self.pick_at].config.store_field, "store_field")

    def event(self, t: SourceTable, rec: tuple) -> ChangeEvent:
        row = typed_row(t.names, t.converters, rec[: len(t.names)])
        headers: dict[str, Any] = {"via": "repair"}
        if self.changed_by is not None:
            headers["changed_by"] = row.get(self.changed_by)
        pos = self.pos
        return ChangeEvent(
            READ, t.schema, t.name, None, row, pos.point, pos.point, 0, pos.ts_ms, None, "true", pos.db,
            self.run.cfg.name, t.pk, headers=headers, toast=False, types=t.types,
        )  # fmt: skip

    def outputs(self, group: list) -> tuple[list[ChangeEvent], list[HoldError], int]:
        """The group's POS rows through the stages: (what reaches the sink, holds, how many filtered)."""
        outs, holds, filtered = [], [], 0
        if self.pick_at is None:
            for t, rec in group:
                try:
                    out = apply_stages(self.stages, self.event(t, rec))
                except HoldError as e:
                    holds.append(e)
                    continue
                if out is None:
                    filtered += 1
                else:
                    outs.append(out)
            return outs, holds, filtered
        # a pick with a fallback store: the designated store's row counts as there when the stages before the
        # pick let it through or hold it (as cdc/fallback.py answers the pick about the POS)
        pre, present = [], set()
        for t, rec in group:
            ev = self.event(t, rec)
            store = ev.after.get(self.store_src)
            try:
                p = apply_stages(self.stages[: self.pick_at], ev)
            except HoldError as e:
                holds.append(e)
                present.add((t.qualified, str(store)))
                continue
            if p is None:
                filtered += 1
            else:
                present.add((t.qualified, str(store)))
                pre.append(p)
        pick = self.stages[self.pick_at]
        pick.exists = lambda kv, store, table: (table, str(store)) in present
        for p in pre:
            try:
                out = apply_stages(self.stages[self.pick_at :], p)
            except HoldError as e:
                holds.append(e)
                continue
            if out is None:
                filtered += 1
            else:
                outs.append(out)
        return outs, holds, filtered

    def __call__(self, key: str, group: list, stored: dict | None) -> None:
        report, resolver = self.report, self.run.resolver
        outs, holds, filtered = self.outputs(group) if group else ([], [], 0)
        if filtered:
            report.filtered += filtered
            if len(report.filtered_examples) < report.examples:
                report.filtered_examples.append(key)
        if holds and not outs:
            e = holds[0]
            report.held.append({"key": key, "why": f"{e.rule}: {e}" if e.rule else str(e)})
            return
        if len(outs) > 1:
            if stored is None or not any(not self._differs(o.after, stored) for o in outs):
                report.ambiguous.append(key)
            return
        if not outs:
            if stored is not None:
                resolver.add(Candidate(key, "extra", stored=stored))
            return
        out = outs[0]
        row = out.after
        try:
            out_key = key_text(tuple(row[k] for k in self.key_cols))
        except KeyError:
            out_key = None
        if out_key is None or any(row.get(k) is None for k in self.key_cols):
            report.held.append(
                {"key": key, "why": f"sink.key: the storefront key {', '.join(self.key_cols)} is NULL"}
            )
            return
        if out_key != key:
            raise CdcError(
                f"the POS row read under key {key!r} has the storefront key {out_key!r} after the stages: the key "
                "does not read the same as text in both places, so the rows cannot be ordered alike"
            )
        scheduled = "schedule" in out.headers
        if stored is None:
            resolver.add(Candidate(key, "missing", out=out, scheduled=scheduled))
            return
        cols = self._differs(row, stored)
        if cols:
            resolver.add(
                Candidate(key, "different", out=out, stored=stored, scheduled=scheduled, columns=cols)
            )

    def _differs(self, row: dict, stored: dict) -> list[str]:
        cols = [c for c in row if c in self.target_cols]
        return differing_columns(row, stored, cols)
