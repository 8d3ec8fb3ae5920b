"""Runs each change through the stages into the sink: the result is buffered (`sink.add`), a change a stage
holds goes to the sink's held list with its kind (quarantine or dead letter), a filtered one is dropped.

A ChangeBatch (a run of a table's inserts and updates, still in the source's form) goes to the fast path
(cdc/fast/), which encodes what it can for the sink in one pass and hands the rest back change by change.

Two things need more than one change at a time:
* a guard that compares with the storefront (max_change_pct): the stages before it run ahead on a run of up
  to LOOKAHEAD changes, so the storefront values it asks for are read in one statement (`sink.prefetch`)
  rather than one per change; the rest of the stages then run change by change in order (a change still
  sees the ones before it, buffered in the sink);
* a pick with a fallback store (cdc/fallback.py): when the pick marks a delete of the designated store's row,
  the fallback store's row for the key is read from the source right after the delete is buffered, and
  buffered as an upsert with the delete's position, in the same sink transaction.
"""

from __future__ import annotations

from typing import Any

from cdc.errors import HoldError
from cdc.events import ChangeBatch, ChangeEvent
from cdc.stages import GuardStage, Stage, apply_stages

LOOKAHEAD = 500  # changes staged together when a guard compares with the storefront (one read for all)


class StageRunner:
    def __init__(self, stages: list[Stage], sink: Any, fallback: Any = None, fast: Any = None):
        self.stages = stages
        self.sink = sink
        self.fallback = fallback  # a pick's fallback store: .changes(ev) and .stages
        self.fast = fast  # the fast path (cdc/fast/), which takes ChangeBatches whole
        self.ahead = next(
            (
                i
                for i, s in enumerate(stages)
                if isinstance(s, GuardStage) and s.config.max_change_pct is not None
            ),
            None,
        )
        self.run: list[ChangeEvent] = []  # changes waiting for the lookahead run
        self.filtered: dict[str, int] = {}  # changes a stage left out, by stage name (for metrics)

    def push(self, ev: ChangeEvent) -> None:
        """Runs `ev` through the stages (or queues it for the lookahead run, which goes once full)."""
        if self.ahead is None:
            self._apply(ev, self.stages)
            return
        self.run.append(ev)
        if len(self.run) >= LOOKAHEAD:
            self.flush()

    def push_batch(self, batch: ChangeBatch) -> None:
        """A run of a table's changes (ChangeBatch): to the fast path, or change by change."""
        if self.fast is not None:
            self.flush()
            self.fast.push(batch, self.push)
        else:
            for ev in batch.events():
                self.push(ev)

    def flush(self) -> None:
        """Runs what is queued (before the sink writes, commits or the pipeline stops)."""
        if self.run:
            self._apply_run(self.run)

    def _apply(self, ev: ChangeEvent, stages: list[Stage]) -> None:
        try:
            out = apply_stages(stages, ev, dropped=self.filtered)
            if out is not None:
                self.sink.add(out)
        except HoldError as e:
            self._hold(ev, e)
            return
        if self.fallback is not None and (out or ev).headers.get("pick_fallback_needed"):
            self._refill(out or ev)

    def _refill(self, ev: ChangeEvent) -> None:
        """After the delete of the designated store's row (`ev`, just buffered, or dropped by a stage after the
        pick): the fallback store's row for the key, read from the source now, through the stages (the pick
        only re-keys it), buffered with the delete's position so it lands in the same sink transaction."""
        fallback = self.fallback
        for row in fallback.changes(ev):
            self._apply(row, fallback.stages)

    def _hold(self, ev: ChangeEvent, e: HoldError) -> None:
        self.sink.hold(ev, e, getattr(e, "kind", "dead_letter"))  # a guard's GuardViolation says which

    def _apply_run(self, run: list[ChangeEvent]) -> None:
        pre, post = self.stages[: self.ahead], self.stages[self.ahead :]
        staged: list[tuple[ChangeEvent, ChangeEvent | None]] = []
        for item in run:
            try:
                ev = apply_stages(pre, item, dropped=self.filtered)
            except HoldError as e:
                self._hold(item, e)
                continue
            if ev is not None or (self.fallback is not None and item.headers.get("pick_fallback_needed")):
                staged.append((item, ev))  # None: a delete dropped after the pick that asks for the fallback
        run.clear()
        self.sink.prefetch(
            post[0].field, [ev.after for _, ev in staged if ev is not None and ev.after is not None]
        )
        for item, ev in staged:
            if ev is None:
                self._refill(item)
            else:
                self._apply(ev, post)
