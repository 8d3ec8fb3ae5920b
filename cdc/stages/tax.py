"""`tax`: convert a price between tax-exclusive (net) and tax-inclusive (gross).

    {type: tax, field: price, direction: add, rate: 0.13, scale: 2}                 # net -> gross
    {type: tax, field: price, direction: remove, rate_field: vat_rate, scale: 2, into: net_price}

* `direction: add`: gross = price * (1 + rate); `remove`: net = price / (1 + rate).
* `rate` is a fraction (0.13 for 13%), 0 <= rate < 1; or `rate_field` names a column that holds it per row
  (exactly one of the two). A row rate outside that range, null, or not a number holds the change.
* The result is computed exactly and rounded once, to `scale` places with `rounding` (the names of `money`:
  half_up, half_even, down, up). A negative zero result is zero.
* `into` writes the result to another column (the input stays as it is); by default the input is overwritten.

Inputs as in `money`: int, Decimal or a numeric string; null stays null and an unchanged TOAST marker stays
(so the sink keeps the value it has). Floats, NaN, infinities, booleans, other types, an `after` image
without the field, and a value whose exact result would need thousands of digits are held. `before` is converted too when it holds the field (and,
with `rate_field`, the rate); both images are converted before either is written, so a held change is left
as it came in.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, ROUND_UP, Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages.base import StageConfigBase, short
from cdc.stages.decimals import ROUNDING_MODES, NotANumber, config_decimal, row_decimal

_ONE = Decimal(1)
_TWO = Decimal(2)
_MAX_PLACES = 200  # decimal places of an input (price or row rate)
_EXACT = Context(prec=2000, Emax=999_999, Emin=-999_999, traps=[InvalidOperation, Overflow, Inexact])
_ROUND = Context(prec=2000, Emax=999_999, Emin=-999_999, traps=[InvalidOperation, Overflow])


class TaxConfig(StageConfigBase):
    """Convert a price between tax-exclusive and tax-inclusive, exactly, with one rounding.

    Exactly one of `rate` and `rate_field` is required.
    """

    type: Literal["tax"]
    field: str = Field(description="column holding the price to convert")
    direction: Literal["add", "remove"] = Field(
        description="add: net -> gross = price * (1 + rate); remove: gross -> net = price / (1 + rate)"
    )
    rate: Decimal | None = Field(
        None, description="the tax rate as a fraction, 0 <= rate < 1 (0.13 for 13%); or use rate_field"
    )
    rate_field: str | None = Field(
        None, description="column holding each row's rate (a fraction, like rate); instead of rate"
    )
    scale: int = Field(ge=0, le=100, description="decimal places of the result")
    rounding: Literal["half_up", "half_even", "down", "up"] = Field(
        "half_up", description="how the one rounding to scale places goes (as in money)"
    )
    into: str | None = Field(None, description="write the result to this column instead of overwriting field")

    @field_validator("field", "rate_field", "into")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must name a column")
        return v

    @field_validator("rate", mode="before")
    @classmethod
    def _check_rate(cls, v: Any) -> Any:
        d = config_decimal(v, "rate")
        if d is not None:
            _check_rate_range(d, "rate")
        return d

    @model_validator(mode="after")
    def _one_rate(self) -> TaxConfig:
        if self.rate is not None and self.rate_field is not None:
            raise ValueError(
                "tax takes exactly one of rate (e.g. 0.13) and rate_field (a column holding the rate), not both"
            )
        if self.rate is None and self.rate_field is None:
            raise ValueError(
                "tax needs exactly one of rate (e.g. 0.13) and rate_field (a column holding the rate)"
            )
        return self

    def build(self, name: str) -> TaxStage:
        return TaxStage(self, name)


def _check_rate_range(d: Decimal, what: str) -> None:
    if d < 0 or d >= 1:
        hint = f" (did you mean {d / 100}?)" if 1 <= d < 100 else ""
        raise ValueError(f"{what} must be a fraction, 0 <= rate < 1 (0.13 for 13%), got {d}{hint}")
    if d.as_tuple().exponent < -_MAX_PLACES:
        raise ValueError(f"{what} has too many decimal places (at most {_MAX_PLACES})")


class TaxStage:
    def __init__(self, config: TaxConfig, name: str):
        self.config = config
        self.name = name
        self.field = config.field
        self.into = config.into or config.field
        self.rate_field = config.rate_field
        self._add = config.direction == "add"
        self._scale = config.scale
        self._exp = _ONE.scaleb(-config.scale)
        self._mode = ROUNDING_MODES[config.rounding]
        self._factor = None if config.rate is None else _EXACT.add(_ONE, config.rate)

    def _hold(self, ev: ChangeEvent, which: str, reason: str, **details: Any) -> HoldError:
        return HoldError(
            reason, rule=self.name, details={"field": self.field, "image": which, "op": ev.op, **details}
        )

    def _factor_of(self, ev: ChangeEvent, row: dict, which: str) -> Decimal:
        f = self.rate_field
        try:
            raw = row[f]  # type: ignore[index]
        except KeyError:
            raise self._hold(
                ev, which, f"tax rate column {f} is missing from the row", rate_field=f
            ) from None
        try:
            rate = row_decimal(raw)
        except NotANumber as exc:
            raise self._hold(ev, which, f"tax rate {f} {exc}", rate_field=f, rate=short(raw)) from None
        if rate is None or rate is UNCHANGED_TOAST:
            what = "null" if rate is None else "an unchanged TOASTed value the source did not send"
            raise self._hold(ev, which, f"tax rate {f} is {what}", rate_field=f)
        try:
            _check_rate_range(rate, f"tax rate {f}")
        except ValueError as exc:
            raise self._hold(ev, which, str(exc), rate_field=f, rate=rate) from None
        return _EXACT.add(_ONE, rate)  # exact: at most _MAX_PLACES places

    def convert(self, value: Any, ev: ChangeEvent, which: str, row: dict) -> Any:
        """The converted value (None and UNCHANGED_TOAST as they are); HoldError when it can't be."""
        try:
            d = row_decimal(value)
        except NotANumber as exc:
            raise self._hold(ev, which, f"{self.field} {exc}", value=short(value)) from None
        if d is None or d is UNCHANGED_TOAST:
            return d
        factor = self._factor if self._factor is not None else self._factor_of(ev, row, which)
        try:
            if self._add:
                out = _EXACT.multiply(d, factor).quantize(self._exp, self._mode, _ROUND)
            else:
                out = self._divide(d, factor)
        except ArithmeticError:  # an inexact step (thousands of digits) is trapped, never rounded silently
            raise self._hold(
                ev, which, f"{self.field} {short(value, 40)} is out of range for a price", value=short(value)
            ) from None
        if not out and out.is_signed():
            out = out.copy_abs()
        return out

    def _divide(self, d: Decimal, factor: Decimal) -> Decimal:
        """d / factor rounded once, exactly, to `scale` places: an exact integer quotient and remainder of
        d * 10**scale by factor, then the rounding decided on the remainder."""
        x = d.scaleb(self._scale, _EXACT)
        negative = x.is_signed()
        if negative:
            x = x.copy_negate()
        q, r = _EXACT.divmod(x, factor)
        if r:
            mode = self._mode
            if mode == ROUND_UP:
                q = _EXACT.add(q, _ONE)
            elif mode != ROUND_DOWN:
                c = _EXACT.add(r, r).compare(factor)  # 2r vs factor: below, at or above half
                if c > 0 or (c == 0 and (mode == ROUND_HALF_UP or _EXACT.remainder(q, _TWO))):
                    q = _EXACT.add(q, _ONE)
        out = q.scaleb(-self._scale, _EXACT)
        return out.copy_negate() if negative else out

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        f, into = self.field, self.into
        after, before = ev.after, ev.before
        new_before: Any = _SKIP
        if after is not None:
            try:
                value = after[f]
            except KeyError:
                raise self._hold(ev, "after", f"{f} is missing from the row") from None
            new_after = self.convert(value, ev, "after", after)
            if before is not None and before is not after:
                new_before = self._before(ev, before)
            after[into] = new_after
        elif before is not None:
            new_before = self._before(ev, before)
        if new_before is not _SKIP:
            before[into] = new_before  # type: ignore[index]
        return ev

    def _before(self, ev: ChangeEvent, before: dict) -> Any:
        f = self.field
        if f not in before:
            return _SKIP
        rf = self.rate_field
        if rf is not None and (rf not in before or before[rf] is UNCHANGED_TOAST):
            return _SKIP  # the old rate is unknown: leave before as it is
        return self.convert(before[f], ev, "before", before)


_SKIP = object()
