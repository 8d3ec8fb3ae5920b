"""`money`: make a column an exact Decimal with a fixed scale (e.g. integer fen -> yuan with 2 places).

Accepted inputs: int, Decimal, or a numeric string ("12.50", "-3", "1e2"). Null stays null and an unchanged
TOAST marker stays as it is. Floats are held (money must never come from a float), as are NaN, infinities,
booleans, non-numeric strings and other types, and an `after` image without the field.

`divide_by` (optional, > 0) divides first: by a power of ten that is an exact shift of the decimal point;
by anything else the quotient is computed as an exact fraction, so there is only ever one rounding, to
`scale` places with `rounding`:

* half_up: ties away from zero (2.345 -> 2.35, -2.345 -> -2.35)
* half_even: ties to the even digit (2.345 -> 2.34, 2.355 -> 2.36)
* down: toward zero (2.349 -> 2.34, -2.349 -> -2.34)
* up: away from zero (2.341 -> 2.35, -2.341 -> -2.35)

A negative zero result is returned as zero.
"""

from __future__ import annotations

import re
from decimal import (
    ROUND_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Context,
    Decimal,
    InvalidOperation,
    Overflow,
)
from fractions import Fraction
from typing import Any, Literal

from pydantic import Field, field_validator

from cdc.errors import HoldError
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.stages.base import StageConfigBase, short

ROUNDING_MODES = {
    "half_up": ROUND_HALF_UP,
    "half_even": ROUND_HALF_EVEN,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
}
# Enough digits for any sane amount; a result that would need more is held rather than rounded.
MONEY_CONTEXT = Context(prec=1000, Emax=999_999, Emin=-999_999, traps=[InvalidOperation, Overflow])
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_ONE = Decimal(1)


class MoneyConfig(StageConfigBase):
    """Make a column an exact Decimal with a fixed scale (e.g. integer fen -> yuan with 2 places); floats,
    NaN and non-numbers are held."""

    type: Literal["money"]
    field: str = Field(description="column holding the amount")
    divide_by: Decimal | None = Field(
        None, description="divide by this first (> 0), e.g. 100 for minor units; exact, one rounding"
    )
    scale: int = Field(ge=0, le=100, description="decimal places of the result")
    rounding: Literal["half_up", "half_even", "down", "up"] = Field(
        "half_up",
        description="half_up: ties away from zero; half_even: ties to even; down: toward zero; up: away from zero",
    )

    @field_validator("field")
    @classmethod
    def _check_field(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("field must name a column")
        return v

    @field_validator("divide_by", mode="before")
    @classmethod
    def _check_divide_by(cls, v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool):
            raise ValueError("divide_by must be a number such as 100, not a boolean")
        if isinstance(v, float):
            if not v.is_integer():
                raise ValueError(
                    f"divide_by {v!r} is a float, which is not exact; write a whole number (100) "
                    "or quote a decimal ('0.01')"
                )
            v = int(v)
        if isinstance(v, int):
            d = Decimal(v)
        elif isinstance(v, Decimal):
            d = v
        elif isinstance(v, str) and _NUMERIC.fullmatch(v.strip()):
            d = Decimal(v.strip())
        else:
            raise ValueError(f"divide_by must be a number such as 100, got {v!r}")
        if not d.is_finite() or d <= 0:
            raise ValueError(f"divide_by must be greater than 0, got {v!r}")
        return d

    def build(self, name: str) -> MoneyStage:
        return MoneyStage(self, name)


class MoneyStage:
    def __init__(self, config: MoneyConfig, name: str):
        self.config = config
        self.name = name
        self.field = config.field
        self._rounding = ROUNDING_MODES[config.rounding]
        self._scale = config.scale
        self._exp = _ONE.scaleb(-config.scale)
        self._shift: int | None = 0  # divide by 10**shift; None: divide by a fraction
        self._divisor: Fraction | None = None
        d = config.divide_by
        if d is not None:
            _sign, digits, exponent = d.normalize().as_tuple()
            if digits == (1,):
                self._shift = int(exponent)
            else:
                self._shift = None
                self._divisor = Fraction(d)

    def _hold(self, ev: ChangeEvent, which: str, value: Any, reason: str) -> HoldError:
        return HoldError(
            f"{self.field} {reason}",
            rule=self.name,
            details={"field": self.field, "image": which, "value": short(value), "op": ev.op},
        )

    def convert(self, value: Any, ev: ChangeEvent, which: str) -> Any:
        cls = value.__class__
        if cls is int:
            d = Decimal(value)
        elif cls is Decimal:
            d = value
            if not d.is_finite():
                raise self._not_finite(ev, which, value)
        elif value is None or value is UNCHANGED_TOAST:
            return value
        elif cls is float:
            raise self._hold(
                ev,
                which,
                value,
                f"is a float ({value!r}): money must never come from a float; send an integer number of "
                "minor units, a Decimal or a numeric string",
            )
        elif cls is bool:
            raise self._hold(ev, which, value, f"is a boolean ({value!r}), not an amount")
        elif isinstance(value, str):
            text = value.strip()
            if not _NUMERIC.fullmatch(text):
                low = text.lower().lstrip("+-")
                if low in ("nan", "snan", "inf", "infinity"):
                    raise self._not_finite(ev, which, Decimal(text))
                raise self._hold(ev, which, value, f"is not a number: {short(value, 40)}")
            d = Decimal(text)
        elif isinstance(value, Decimal):
            d = Decimal(value)
            if not d.is_finite():
                raise self._not_finite(ev, which, value)
        elif isinstance(value, int):
            d = Decimal(int(value))
        else:
            raise self._hold(ev, which, value, f"is a {type(value).__name__}, not an amount")
        try:
            return self.scaled(d)
        except (InvalidOperation, Overflow):
            raise self._hold(
                ev, which, value, f"{short(value, 40)} is too large to convert to {self._scale} places"
            ) from None

    def scaled(self, d: Decimal) -> Decimal:
        """A finite Decimal divided and rounded once to `scale` places (a negative zero as zero); raises
        InvalidOperation or Overflow when it does not fit. The fast path (cdc/fast/) calls it too."""
        shift = self._shift
        if shift is not None:
            if shift:
                d = d.scaleb(-shift, MONEY_CONTEXT)
            out = d.quantize(self._exp, self._rounding, MONEY_CONTEXT)
        else:
            out = self._divide(d)
        if not out and out.is_signed():
            out = out.copy_abs()
        return out

    def _not_finite(self, ev: ChangeEvent, which: str, value: Any) -> HoldError:
        what = "NaN" if value.is_nan() else "infinite"
        return self._hold(ev, which, value, f"is {what}: a price must be a finite number")

    def _divide(self, d: Decimal) -> Decimal:
        """d / divide_by rounded once, exactly, to `scale` places."""
        assert self._divisor is not None
        q = Fraction(d) / self._divisor * 10**self._scale
        negative = q < 0
        num, den = abs(q.numerator), q.denominator
        whole, rem = divmod(num, den)
        mode = self._rounding
        if rem:
            if mode == ROUND_UP:
                whole += 1
            elif mode == ROUND_HALF_UP:
                whole += 2 * rem >= den
            elif mode == ROUND_HALF_EVEN:
                whole += 2 * rem > den or (2 * rem == den and whole % 2 == 1)
        return Decimal(-whole if negative else whole).scaleb(-self._scale, MONEY_CONTEXT)

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        # Convert both images before writing either, so a held change is left as it came in.
        f = self.field
        after, before = ev.after, ev.before
        if after is not None:
            try:
                value = after[f]
            except KeyError:
                raise HoldError(
                    f"{f} is missing from the row",
                    rule=self.name,
                    details={"field": f, "image": "after", "op": ev.op},
                ) from None
            new_after = self.convert(value, ev, "after")
            if before is not None and before is not after and f in before:
                before[f] = self.convert(before[f], ev, "before")
            after[f] = new_after
        elif before is not None and f in before:
            before[f] = self.convert(before[f], ev, "before")
        return ev
