"""`filter`: keep the changes whose row passes `where`, with the transitions a CDC stream needs.

A downstream table that mirrors "the rows that pass" must see a row appear when it starts passing and
disappear when it stops, so an update is judged on both its images:

=================  ==========================  =====================================================
after passes?      before                      result
=================  ==========================  =====================================================
yes                passes, or unknown          update, unchanged
yes                known failing               insert (op 'c', before None): the row starts passing
no                 passes, or unknown          delete (op 'd', after None): the row stops passing
no                 known failing               dropped
=================  ==========================  =====================================================

With no before image the key did not change, so the key columns of `after` stand for it. "Unknown" means it lacks a field `where` reads (a key-only old tuple), or it
cannot be evaluated; treating a before image as unknown is always safe (an upsert, or a delete of a row that
may be absent). Inserts and snapshot reads are kept when `after` passes; deletes are judged on `before` and
kept unless it is known to fail; truncates pass through. A null `where` result counts as failing.

An `after` image that lacks a field `where` reads, or on which `where` cannot be evaluated, is held
(HoldError): the stage cannot tell whether the row belongs downstream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cdc.errors import HoldError
from cdc.events import CREATE, DELETE, READ, TRUNCATE, UNCHANGED_TOAST, UPDATE, ChangeEvent
from cdc.stages.base import StageConfigBase, judgeable_after, short
from cdc.stages.expr import EvalError, Expr, ExprError, MissingField, parse_expr

_UNKNOWN = None  # _test_before result when before cannot be judged


class FilterConfig(StageConfigBase):
    """Keep the changes whose row passes `where`; an update that starts or stops passing becomes an insert or
    a delete, so the downstream table mirrors the rows that pass."""

    type: Literal["filter"]
    where: str = Field(
        description="condition in the expression language, e.g. channel == 'ONLINE' and price > 0"
    )

    @field_validator("where")
    @classmethod
    def _check_where(cls, v: str) -> str:
        try:
            expr = parse_expr(v)
        except ExprError as exc:
            raise ValueError(str(exc)) from None
        if expr._result in ("value", "null"):
            raise ValueError(f"where must be a condition (e.g. price > 0), not a value: {v.strip()!r}")
        return v

    def build(self, name: str) -> FilterStage:
        return FilterStage(self, name)


class FilterStage:
    def __init__(self, config: FilterConfig, name: str):
        self.config = config
        self.name = name
        self.expr: Expr = parse_expr(config.where)
        self._fields = tuple(sorted(self.expr.fields))

    def _hold(self, ev: ChangeEvent, reason: str, **details: Any) -> HoldError:
        details.setdefault("where", self.expr.text)
        details.setdefault("op", ev.op)
        return HoldError(f"filter {self.expr.text!r}: {reason}", rule=self.name, details=details)

    def _result(self, value: Any) -> bool:
        if value is True:
            return True
        if value is False or value is None:
            return False
        raise EvalError(f"where must give true or false, got {type(value).__name__} {short(value, 60)}")

    def _test_after(self, ev: ChangeEvent, after: dict | None) -> bool:
        if after is None:
            raise self._hold(ev, f"op {ev.op!r} change has no after image")
        row = judgeable_after(ev, after, self._fields, self._hold)
        try:
            return self._result(self.expr(row))
        except MissingField as exc:
            raise self._hold(ev, f"the row has no field {exc.field!r}", field=exc.field) from None
        except (TypeError, ArithmeticError, ValueError) as exc:
            raise self._hold(ev, str(exc), error=type(exc).__name__) from None

    def _test_before(self, before: dict | None) -> bool | None:
        if before is None:
            return _UNKNOWN
        try:
            return self._result(self.expr(before))
        except (MissingField, TypeError, ArithmeticError, ValueError):
            return _UNKNOWN

    def __call__(self, ev: ChangeEvent) -> ChangeEvent | None:
        op = ev.op
        if op == UPDATE:
            passes = self._test_after(ev, ev.after)
            before = ev.before
            if before is None and ev.after is not None:
                # no old image means the key did not change: the key columns of after are those of before,
                # so a `where` on key columns alone (channel, store) still judges the old row exactly
                before = {k: ev.after[k] for k in ev.key_columns if k in ev.after}
            was = self._test_before(before)
            if passes:
                if was is False:  # starts passing: insert it
                    ev.op = CREATE
                    ev.before = None
                return ev
            if was is False:  # failed before and after: nothing downstream to change
                return None
            # stops passing (or may have passed): delete it. The old image, where present, names the row
            # downstream (it carries the old key if the key changed); the after row fills in the rest.
            after, before = ev.after, ev.before
            if before:
                gone = dict(after)  # type: ignore[arg-type]
                gone.update((k, v) for k, v in before.items() if v is not UNCHANGED_TOAST)
            else:
                gone = after
            ev.op = DELETE
            ev.before = gone
            ev.after = None
            return ev
        if op == CREATE or op == READ:
            return ev if self._test_after(ev, ev.after) else None
        if op == DELETE:
            return None if self._test_before(ev.before) is False else ev
        if op == TRUNCATE:
            return ev
        raise self._hold(ev, f"unknown op {op!r}")
