"""`set`: constant or computed columns, e.g. `fields: {currency: "'CNY'", synced_at: "now()",
gross: "round(price * 1.13, 2)", label: "concat('SKU ', sku)"}`.

Each value is an expression of the safe language of `cdc.stages.expr`. All expressions are evaluated on the
row as it reaches the stage, then written (like SQL's `UPDATE ... SET`): an expression that reads a column
another entry sets sees the incoming value, so the order of the entries does not matter.

Images:

* `after` is always computed (inserts, updates, snapshot reads); a field the row lacks, a type mismatch, a
  division by zero... holds the change (HoldError naming the field), and the event is left as it came in.
* `before` (an update's old image, a delete's row) is computed too when it holds every field the expression
  reads; when it lacks one (a key-only old image) that entry leaves `before` alone. An error on a complete
  `before` holds the change as well. When an expression's inputs are the same in both images (always so for
  expressions that read no field, such as `now()`), the after value is reused, so both images agree.
* Truncates pass through.

An input that is an unchanged TOASTed value (not sent by the source) is taken from `before` when that holds
it; otherwise the change is held, since the result cannot be computed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages.base import StageConfigBase
from cdc.stages.expr import Expr, ExprError, MissingField, parse_expr

_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """True when an expression must give the same result on `a` as on `b`."""
    return a is b or (a.__class__ is b.__class__ and a.__class__ in (str, int) and a == b)


class SetConfig(StageConfigBase):
    """Set columns to constants or to values computed from the row (expression language of `filter`)."""

    type: Literal["set"]
    fields: dict[str, str] = Field(
        description='column -> expression, e.g. {currency: "\'CNY\'", synced_at: "now()", '
        'gross: "round(price * 1.13, 2)"}; all are evaluated on the incoming row, then written'
    )

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("set needs at least one field, e.g. fields: {currency: \"'CNY'\"}")
        for name, text in v.items():
            if not name.strip():
                raise ValueError("field names must not be empty")
            try:
                parse_expr(text)
            except ExprError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return v

    def build(self, name: str) -> SetStage:
        return SetStage(self, name)


class SetStage:
    def __init__(self, config: SetConfig, name: str):
        self.config = config
        self.name = name
        self._items: tuple[tuple[str, Expr, tuple[str, ...]], ...] = tuple(
            (field, e, tuple(sorted(e.fields)))
            for field, e in ((f, parse_expr(t)) for f, t in config.fields.items())
        )

    def _hold(
        self, ev: ChangeEvent, field: str, expr: Expr, which: str, reason: str, **extra: Any
    ) -> HoldError:
        details = {"field": field, "expr": expr.text, "image": which, "op": ev.op, **extra}
        return HoldError(f"set {field} = {expr.text!r}: {reason}", rule=self.name, details=details)

    def _eval(self, ev: ChangeEvent, field: str, expr: Expr, fields: tuple[str, ...], row: dict, which: str):
        src = row
        if which == "after":
            for f in fields:
                if row.get(f, None) is UNCHANGED_TOAST:
                    before = ev.before
                    old = before.get(f, UNCHANGED_TOAST) if before else UNCHANGED_TOAST
                    if old is UNCHANGED_TOAST:
                        raise self._hold(
                            ev,
                            field,
                            expr,
                            which,
                            f"field {f!r} is an unchanged TOASTed value the source did not send",
                            input=f,
                        )
                    if src is row:
                        src = dict(row)
                    src[f] = old
        try:
            return expr(src)
        except MissingField as exc:
            raise self._hold(
                ev, field, expr, which, f"the row has no field {exc.field!r}", input=exc.field
            ) from None
        except (TypeError, ArithmeticError, ValueError) as exc:
            raise self._hold(ev, field, expr, which, str(exc), error=type(exc).__name__) from None

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        after, before = ev.after, ev.before
        new_after: list[tuple[str, Any]] = []
        new_before: list[tuple[str, Any]] = []
        shared = before is after
        for field, expr, fields in self._items:
            value: Any = _MISSING
            if after is not None:
                value = self._eval(ev, field, expr, fields, after, "after")
                new_after.append((field, value))
            if before is None or shared:
                continue
            reuse = value is not _MISSING
            for f in fields:
                old = before.get(f, _MISSING)
                if old is _MISSING or old is UNCHANGED_TOAST:
                    break  # before cannot be computed: leave it alone
                if reuse and not _same(after.get(f, _MISSING), old):  # type: ignore[union-attr]
                    reuse = False
            else:
                new_before.append(
                    (field, value if reuse else self._eval(ev, field, expr, fields, before, "before"))
                )
        if after is not None:
            for field, value in new_after:
                after[field] = value
        if new_before:
            for field, value in new_before:
                before[field] = value  # type: ignore[index]
        return ev
