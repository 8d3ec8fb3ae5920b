"""`guard`: guardrails on a price before it reaches the storefront.

    {type: guard, field: price, min: 0.01, max: 99999, max_change_pct: 50, not_below: cost,
     required: [sku, price], action: quarantine}

Rules, checked in this order on `after` (the first violation wins):

* `required`: each listed column is present and not null;
* `min` / `max`: field >= min, field <= max;
* `not_below`: field >= the row's value of another column (e.g. cost); skipped when that value is null,
  held (dead letter, not a guard violation) when the column is missing from the row;
* `max_change_pct`: |field - current| <= max_change_pct% of |current|, where current is the storefront's
  value for the key now (see `current` below); from a current value of 0 any change exceeds it.

A violation raises `GuardViolation` (a `cdc.errors.HoldError`) with `rule = "<stage name>:<rule name>"`
(e.g. "guard#5:max_change_pct"), a reason such as "price 0.99 is 99.0% below the storefront's 99.00
(max_change_pct 50)", details {field, value, the limit / current / other column's value, action}, and
`.action` / `.kind` = the configured action: "quarantine" (default: held for `cdc quarantine approve/reject`)
or "dead_letter". The pipeline passes `kind` to the sink's hold.

What passes unguarded: deletes and truncates; a null field (unless `required` lists it); an unchanged TOASTed
field (the value did not change). A field value that is not an exact number (a float, NaN, a non-numeric
string...) is held as a plain HoldError (rule "<stage name>:number"), as the rules cannot judge it.

**The `current` lookup.** `max_change_pct` compares with the storefront, which a pure stage cannot read, so
the pipeline injects

    GuardStage.current: Callable[[dict], Decimal | None] | None

called as `current(row)` with the `after` row as it is at this stage; it returns the storefront's current
value of `field` for that row's key, or None when the storefront has no such row (a new SKU: the rule is
skipped for that change). An int, a float (SQLite REAL; taken via its shortest repr) or a numeric string is
accepted. While `current` is None (not injected) the `max_change_pct` rule is skipped. It is called only when
every other rule passed, once per change.

**Who may change it.** `who`, `exempt`, `allow` and `approvers` (cdc/stages/permissions.py): changes by the
`exempt` roles pass the limits above; only the `allow` roles may change `field` at all (rule `allow`, checked
after `required`); `approvers` may decide what this guard held. For `allow` the pipeline injects `current` as
well when the storefront has the column (to tell a change without an old image), and for `who.lookup` the
roles reader `permissions.roles_of` (cdc/roles.py).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cdc.errors import HoldError
from cdc.events import CREATE, READ, UNCHANGED_TOAST, UPDATE, ChangeEvent
from cdc.stages.base import StageConfigBase, short
from cdc.stages.decimals import NotANumber, config_decimal, row_decimal
from cdc.stages.permissions import Permissions, WhoConfig, check_roles

_CTX = Context(prec=2000, Emax=999_999, Emin=-999_999)
_HUNDRED = Decimal(100)


class GuardViolation(HoldError):
    """A guardrail was violated: hold the change with `reason`; `action` (also as `kind`) says where:
    "quarantine" (awaits approval) or "dead_letter"."""

    def __init__(self, reason: str, rule: str = "", details: dict | None = None, action: str = "quarantine"):
        super().__init__(reason, rule, details)
        self.action = action

    @property
    def kind(self) -> str:
        return self.action


class GuardConfig(StageConfigBase):
    """Guardrails on a price; a violating change is held (quarantine by default) with a readable reason.

    At least one rule (min, max, max_change_pct, not_below, required, allow) is needed; all but `required`
    need `field`. `exempt` and `allow` need `who` (cdc/stages/permissions.py).
    """

    type: Literal["guard"]
    field: str | None = Field(None, description="the guarded column, e.g. price")
    min: Decimal | None = Field(None, description="lowest allowed value (inclusive)")
    max: Decimal | None = Field(None, description="highest allowed value (inclusive)")
    max_change_pct: Decimal | None = Field(
        None,
        description="largest change, in percent, from the storefront's current value for the key "
        "(needs the pipeline's current lookup; skipped without it or for a new key)",
    )
    not_below: str | None = Field(None, description="column the value must not be below, e.g. cost")
    required: list[str] = Field(default_factory=list, description="columns that must be present and not null")
    action: Literal["quarantine", "dead_letter"] = Field(
        "quarantine", description="where a violating change goes: quarantine (awaits approval) or dead_letter"
    )
    who: WhoConfig | None = Field(
        None, description="who made the change and their role(s), for exempt and allow (see WhoConfig)"
    )
    exempt: list[str] = Field(
        default_factory=list,
        description="roles whose changes pass this guard's limits (min, max, not_below, max_change_pct), "
        "e.g. [pricing]; anyone else's change that breaks one is held with who and their role",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="the only roles that may change field at all, e.g. [hq]; anyone else's change is held",
    )
    approvers: list[str] = Field(
        default_factory=list,
        description="who may approve or reject what this guard held (cdc quarantine approve ID --by NAME); "
        "empty: anyone",
    )

    @field_validator("min", "max", "max_change_pct", mode="before")
    @classmethod
    def _check_number(cls, v: Any, info: Any) -> Any:
        d = config_decimal(v, info.field_name)
        if info.field_name == "max_change_pct" and d is not None and d < 0:
            raise ValueError(f"max_change_pct must be 0 or more, got {v!r}")
        return d

    @field_validator("field", "not_below")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must name a column")
        return v

    @field_validator("required")
    @classmethod
    def _check_required(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for f in v:
            if not f.strip():
                raise ValueError("column names must not be empty")
            if f in seen:
                raise ValueError(f"column {f!r} is listed twice")
            seen.add(f)
        return v

    @field_validator("exempt", "allow", "approvers")
    @classmethod
    def _check_names(cls, v: list[str], info: Any) -> list[str]:
        return check_roles(v, info.field_name)

    @model_validator(mode="after")
    def _check_rules(self) -> GuardConfig:
        limits = [n for n in ("min", "max", "max_change_pct", "not_below") if getattr(self, n) is not None]
        on_field = limits + (["allow"] if self.allow else [])
        if self.exempt and not limits:
            raise ValueError(
                "exempt lifts this guard's limits: give one (min, max, not_below, max_change_pct)"
            )
        if not on_field and not self.required:
            raise ValueError(
                "guard needs at least one rule: min, max, max_change_pct, not_below, allow (with field) or "
                "required"
            )
        if (self.exempt or self.allow) and self.who is None:
            raise ValueError(
                f"{'exempt' if self.exempt else 'allow'} needs who: the row's column naming who changed it, "
                "e.g. who: {column: updated_by, lookup: {table: public.pos_users, key: user_id, value: role}}"
            )
        if self.who is not None and not (self.exempt or self.allow):
            raise ValueError("who is used by exempt or allow: give one of them, e.g. exempt: [pricing]")
        if on_field and self.field is None:
            raise ValueError(f"{', '.join(on_field)} need(s) field: the column to guard, e.g. field: price")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        if self.not_below is not None and self.not_below == self.field:
            raise ValueError("not_below must name another column than field")
        return self

    def build(self, name: str) -> GuardStage:
        return GuardStage(self, name)


def _num(d: Decimal) -> str:
    """A limit as written in the config (50, not 5E+1)."""
    return format(d, "f")


class GuardStage:
    current: Callable[[dict[str, Any]], Any] | None
    """Injected by the pipeline: current(row) -> the storefront's value of `field` for the row's key, or None
    for no such row. None (the default): the max_change_pct rule is skipped."""

    def __init__(self, config: GuardConfig, name: str):
        self.config = config
        self.name = name
        self.current = None
        self.field = config.field
        self.action = config.action
        self._min = config.min
        self._max = config.max
        self._pct = config.max_change_pct
        self._other = config.not_below
        self._required = tuple(config.required)
        self._rule_prefix = f"{name}:"
        who = config.who
        self.permissions = (
            None if who is None else Permissions(who, config.exempt, config.allow, config.field, name)
        )
        self._exempt = bool(config.exempt)
        self._allow = bool(config.allow)
        self._limited = any(v is not None for v in (self._min, self._max, self._pct, self._other))

    def _violation(self, ev: ChangeEvent, rule: str, reason: str, **details: Any) -> GuardViolation:
        details = {"field": self.field, **details, "op": ev.op, "action": self.action}
        return GuardViolation(reason, rule=self._rule_prefix + rule, details=details, action=self.action)

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        op = ev.op
        if op != UPDATE and op != CREATE and op != READ:
            return ev  # deletes and truncates pass unguarded
        row = ev.after
        if row is None:
            return ev
        for f in self._required:
            v = row.get(f)
            if v is None:
                what = "is missing from the row" if f not in row else "is null"
                raise self._violation(ev, "required", f"{f} {what} (required)", field=f, value=None)
        field = self.field
        if field is None:
            return ev
        if self._allow:
            exc = self.permissions.judge_allow(ev, row, self.current)  # type: ignore[union-attr]
            if exc is not None:
                raise self._violation(ev, "allow", exc.reason, **exc.details)
            if not self._limited:
                return ev  # who may change it is all this guard asks (the field need not be a number)
        if self._exempt:
            try:
                return self._limits(ev, row, field)
            except GuardViolation as exc:
                self.permissions.judge_exempt(ev, row, exc)  # type: ignore[union-attr]
                return ev
        return self._limits(ev, row, field)

    def _limits(self, ev: ChangeEvent, row: dict, field: str) -> ChangeEvent:
        op = ev.op
        raw = row.get(field)
        if raw is None or raw is UNCHANGED_TOAST:
            return ev
        try:
            value = row_decimal(raw)
        except NotANumber as exc:
            raise HoldError(
                f"{field} {exc}",
                rule=self._rule_prefix + "number",
                details={"field": field, "value": short(raw), "op": op},
            ) from None
        lo = self._min
        if lo is not None and value < lo:
            raise self._violation(
                ev, "min", f"{field} {value} is below the minimum {_num(lo)}", value=value, limit=lo
            )
        hi = self._max
        if hi is not None and value > hi:
            raise self._violation(
                ev, "max", f"{field} {value} is above the maximum {_num(hi)}", value=value, limit=hi
            )
        if self._other is not None:
            self._not_below(ev, row, field, value)
        if self._pct is not None and self.current is not None:
            self._max_change(ev, row, field, value)
        return ev

    def _not_below(self, ev: ChangeEvent, row: dict, field: str, value: Decimal) -> None:
        o = self._other
        try:
            raw = row[o]  # type: ignore[index]
        except KeyError:
            raise HoldError(
                f"{o} is missing from the row, so the guard {field} not_below {o} cannot be checked "
                f"(put the guard before any stage that drops {o})",
                rule=self._rule_prefix + "not_below",
                details={"field": field, "other": o, "op": ev.op},
            ) from None
        if raw is UNCHANGED_TOAST:
            before = ev.before
            raw = before.get(o) if before else None
        if raw is None or raw is UNCHANGED_TOAST:
            return
        try:
            other = row_decimal(raw)
        except NotANumber as exc:
            raise HoldError(
                f"{o} {exc}",
                rule=self._rule_prefix + "number",
                details={"field": o, "value": short(raw), "op": ev.op},
            ) from None
        if value < other:
            raise self._violation(
                ev,
                "not_below",
                f"{field} {value} is below {o} {other}",
                value=value,
                other_field=o,
                other=other,
            )

    def _max_change(self, ev: ChangeEvent, row: dict, field: str, value: Decimal) -> None:
        raw = self.current(row)  # type: ignore[misc]
        if raw is None:
            return
        try:
            cur = Decimal(repr(raw)) if raw.__class__ is float else row_decimal(raw)
        except NotANumber as exc:
            raise HoldError(
                f"the storefront's {field} {exc}",
                rule=self._rule_prefix + "max_change_pct",
                details={"field": field, "current": short(raw), "op": ev.op},
            ) from None
        if cur is None or not cur.is_finite():
            return
        pct = self._pct
        assert pct is not None
        change = _CTX.subtract(value, cur)
        if not change:
            return
        base = cur.copy_abs()
        # exact: |change| * 100 > pct * |cur|, no division
        if _CTX.multiply(change.copy_abs(), _HUNDRED) <= _CTX.multiply(pct, base):
            return
        direction = "above" if change > 0 else "below"
        details = {"value": value, "current": cur, "limit": pct}
        if not base:
            reason = (
                f"{field} {value} is {direction} the storefront's {cur}: any change from zero exceeds "
                f"max_change_pct {_num(pct)}"
            )
            raise self._violation(ev, "max_change_pct", reason, change_pct=None, **details)
        actual = _CTX.divide(_CTX.multiply(change.copy_abs(), _HUNDRED), base)
        shown = _show_pct(actual, pct)
        reason = (
            f"{field} {value} is {shown}% {direction} the storefront's {cur} (max_change_pct {_num(pct)})"
        )
        raise self._violation(ev, "max_change_pct", reason, change_pct=shown, **details)


def _show_pct(actual: Decimal, limit: Decimal) -> str:
    """`actual` with one decimal place, or more when one would not show it above `limit` (50.04 vs 50)."""
    for places in range(1, 12):
        shown = actual.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP, _CTX)
        if shown > limit:
            return format(shown, "f")
    return format(actual.normalize(_CTX), "f")  # pragma: no cover - a difference beyond 11 places
