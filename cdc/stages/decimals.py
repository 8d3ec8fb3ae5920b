"""Exact-number helpers shared by the price stages (tax, guard): config values, row values, one rounding.

Config values (`rate: 0.13`, `min: 0.01`) reach pydantic as YAML floats. A float whose shortest repr has at
most 15 significant digits is exactly the decimal text that was written (every such literal survives the round
trip through a double), so it is taken as that Decimal; a longer one is refused with a hint to quote it.
Row values are never taken from floats (see `row_decimal`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from cdc.events import UNCHANGED_TOAST
from cdc.stages.money import ROUNDING_MODES

__all__ = ["NotANumber", "ROUNDING_MODES", "config_decimal", "row_decimal"]

_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_FLOAT_DIGITS = 15  # a decimal literal with at most this many significant digits survives a double exactly


def config_decimal(v: Any, what: str) -> Any:
    """A pydantic `mode="before"` helper: a config number as an exact, finite Decimal (None passes).

    Accepts int, Decimal, numeric strings ("0.13", "1e2") and floats that are short enough to be exactly the
    text that was written (YAML `0.13`); refuses booleans, NaN, infinities and long floats.
    """
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"{what} must be a number, not a boolean")
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be a finite number, got {v!r}")
        if v.is_integer() and abs(v) < 1e15:
            return Decimal(int(v))
        d = Decimal(repr(v))
        if len(d.as_tuple().digits) > _FLOAT_DIGITS:
            raise ValueError(
                f"{what} {v!r} has too many digits to be read exactly as a float; quote it (e.g. '{v!r}')"
            )
        return d
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, str) and _NUMERIC.fullmatch(v.strip()):
        d = Decimal(v.strip())
    else:
        raise ValueError(f"{what} must be a number such as 0.13, got {v!r}")
    if not d.is_finite():
        raise ValueError(f"{what} must be a finite number, got {v!r}")
    return d


class NotANumber(ValueError):
    """A row value that cannot be used as an exact number; str() completes "<field> ..." (e.g. "is NaN")."""


def row_decimal(value: Any) -> Any:
    """A row value as an exact Decimal; None and UNCHANGED_TOAST are returned as they are.

    int and Decimal are exact; a numeric string is parsed. Floats (money must never come from a float),
    booleans, NaN, infinities and other types raise NotANumber.
    """
    cls = value.__class__
    if cls is Decimal:
        if value.is_finite():
            return value
        raise NotANumber("is NaN" if value.is_nan() else "is infinite")
    if cls is int:
        return Decimal(value)
    if value is None or value is UNCHANGED_TOAST:
        return value
    if cls is float:
        raise NotANumber(
            f"is a float ({value!r}): money must never come from a float; send a Decimal, an integer or a "
            "numeric string"
        )
    if cls is bool:
        raise NotANumber(f"is a boolean ({value!r}), not a number")
    if isinstance(value, str):
        text = value.strip()
        if _NUMERIC.fullmatch(text):
            return Decimal(text)
        low = text.lower().lstrip("+-")
        if low in ("nan", "snan"):
            raise NotANumber("is NaN")
        if low in ("inf", "infinity"):
            raise NotANumber("is infinite")
        r = repr(value)
        raise NotANumber(f"is not a number: {r if len(r) <= 40 else r[:37] + '...'}")
    if isinstance(value, Decimal):
        return row_decimal(Decimal(value))
    if isinstance(value, int):
        return Decimal(int(value))
    raise NotANumber(f"is a {type(value).__name__}, not a number")
