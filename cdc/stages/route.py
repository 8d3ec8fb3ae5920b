"""`route`: tag each change with a lane, e.g. so price drops on promoted items overtake a bulk reload.

    {type: route, rules: [{when: "promo == true", lane: priority}, {when: "op_user == 'sync'", lane: bulk}],
     default: normal}

The rules are tried in order on the row (`after`, or `before` for a delete); the first whose `when` is true
sets `ev.lane`, and when none is, `ev.lane = default`. A truncate (no row) gets the default lane.

The stage never drops or holds a change: when a rule cannot be evaluated on a row (a missing field, a type
mismatch, a result that is not true/false/null), the change gets the default lane and
`ev.headers["route_error"]` says which rule failed and why. A null result counts as false. An unchanged
TOASTed value is taken from the old image when that holds it (otherwise that rule fails as above).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cdc.events import DELETE, UNCHANGED_TOAST, ChangeEvent
from cdc.stages.base import StageConfigBase, short
from cdc.stages.expr import Expr, ExprError, MissingField, parse_expr

LANE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class RouteRule(BaseModel):
    """One rule of a `route` stage: the lane for the rows where `when` is true."""

    model_config = ConfigDict(extra="forbid")

    when: str = Field(description="condition on the row, e.g. promo == true or abs(price - old_price) > 10")
    lane: str = Field(pattern=LANE_PATTERN, description="lane name, e.g. priority")

    @field_validator("when")
    @classmethod
    def _check_when(cls, v: str) -> str:
        try:
            expr = parse_expr(v)
        except ExprError as exc:
            raise ValueError(str(exc)) from None
        if expr._result in ("value", "null"):
            raise ValueError(f"when must be a condition (e.g. promo == true), not a value: {v.strip()!r}")
        return v


class RouteConfig(StageConfigBase):
    """Tag each change with a lane (`ev.lane`): the first rule whose `when` is true, else `default`."""

    type: Literal["route"]
    rules: list[RouteRule] = Field(description="tried in order; the first whose when is true gives the lane")
    default: str = Field(
        "bulk", pattern=LANE_PATTERN, description="lane when no rule matches (or a rule fails on the row)"
    )

    @field_validator("rules")
    @classmethod
    def _check_rules(cls, v: list[RouteRule]) -> list[RouteRule]:
        if not v:
            raise ValueError(
                'route needs at least one rule, e.g. rules: [{when: "promo == true", lane: priority}]'
            )
        return v

    def build(self, name: str) -> RouteStage:
        return RouteStage(self, name)


class RouteStage:
    def __init__(self, config: RouteConfig, name: str):
        self.config = config
        self.name = name
        self.default = config.default
        rules = []
        for i, r in enumerate(config.rules, start=1):
            expr = parse_expr(r.when)
            rules.append((expr, r.lane, tuple(sorted(expr.fields)), i))
        self._rules = tuple(rules)

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        row = ev.before if ev.op == DELETE else ev.after
        if row is None:
            ev.lane = self.default
            return ev
        for expr, lane, fields, i in self._rules:
            try:
                v = expr(row)
            except (MissingField, TypeError, ArithmeticError, ValueError) as exc:
                v = self._retry(ev, row, expr, fields, i, exc)
                if v is _FAILED:
                    return ev
            if v is True:
                ev.lane = lane
                return ev
            if v is not False and v is not None:
                return self._fail(ev, i, expr.text, f"when must give true or false, got {short(v, 60)}")
        ev.lane = self.default
        return ev

    def _retry(
        self, ev: ChangeEvent, row: dict, expr: Expr, fields: tuple[str, ...], i: int, exc: Exception
    ) -> Any:
        """Evaluate again with unchanged TOASTed values taken from the old image; _FAILED when that fails."""
        before = ev.before
        if before and before is not row and any(row.get(f) is UNCHANGED_TOAST for f in fields):
            fixed = dict(row)
            for f in fields:
                if row.get(f) is UNCHANGED_TOAST and before.get(f, UNCHANGED_TOAST) is not UNCHANGED_TOAST:
                    fixed[f] = before[f]
            try:
                return expr(fixed)
            except (MissingField, TypeError, ArithmeticError, ValueError) as exc2:
                exc = exc2
        self._fail(ev, i, expr.text, str(exc))
        return _FAILED

    def _fail(self, ev: ChangeEvent, i: int, text: str, why: str) -> ChangeEvent:
        ev.lane = self.default
        ev.headers["route_error"] = f"{self.name} rule {i} ({text!r}): {why}"
        return ev


_FAILED = object()
