"""What the expression language's operators and functions do to values (cdc/stages/expr.py parses and
compiles the text; the closures it builds call these): kinds and how they show in errors, numbers as Decimal,
comparisons that refuse mixed kinds, truth, arithmetic in EXPR_CONTEXT, and the functions."""

from __future__ import annotations

import ast
import datetime as dt
import operator
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any

from cdc.events import UNCHANGED_TOAST

EXPR_CONTEXT = Context(
    prec=100, rounding="ROUND_HALF_EVEN", traps=[DivisionByZero, InvalidOperation, Overflow], Emax=999_999
)
_ToastType = type(UNCHANGED_TOAST)


class EvalError(TypeError):
    """The expression cannot be evaluated on this row (mismatched types, division by zero, NaN ordering...)."""


# ---------------------------------------------------------------------------------------------- values


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | Decimal | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if v is UNCHANGED_TOAST:
        return "unchanged TOAST value"
    return type(v).__name__


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _num(v: Any, what: str) -> Decimal:
    """A number operand as a Decimal (int exact, float via its shortest repr); anything else -> EvalError."""
    cls = v.__class__
    if cls is Decimal:
        return v
    if cls is int:
        return Decimal(v)
    if cls is float:
        return Decimal(repr(v))
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        return Decimal(int(v))
    raise EvalError(f"{what} needs a number, got {_kind(v)} {_show(v)}")


def _coerce_pair(a: Any, b: Any, op: str) -> tuple[Any, Any]:
    """Slow path of a comparison whose operands have different classes (or are TOAST markers)."""
    ka, kb = _kind(a), _kind(b)
    if ka != kb or a is UNCHANGED_TOAST:
        raise EvalError(f"cannot compare {ka} {_show(a)} with {kb} {_show(b)} using {op}")
    if ka == "number":
        if a.__class__ is float and b.__class__ is not float:
            a = Decimal(repr(a))
        elif b.__class__ is float and a.__class__ is not float:
            b = Decimal(repr(b))
    return a, b


def _compare_fn(op: Callable[[Any, Any], bool], sym: str) -> Callable[[Any, Any], bool]:
    def cmp(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if a.__class__ is not b.__class__ or a.__class__ is _ToastType:
            a, b = _coerce_pair(a, b, sym)
        try:
            return op(a, b)
        except (TypeError, ArithmeticError) as exc:
            raise EvalError(f"cannot compare {_show(a)} with {_show(b)} using {sym}: {exc}") from None

    return cmp


_CMP_OPS: dict[type, tuple[str, Callable[[Any, Any], bool]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}
_COMPARE = {k: _compare_fn(fn, sym) for k, (sym, fn) in _CMP_OPS.items()}


def _truth(v: Any, what: str) -> bool:
    if v is True:
        return True
    if v is False or v is None:
        return False
    raise EvalError(f"{what} needs true/false, got {_kind(v)} {_show(v)}")


def _arith(a: Any, b: Any, op: str) -> Any:
    if a is None or b is None:
        return None
    if op == "+" and a.__class__ is str and b.__class__ is str:
        return a + b
    if op == "+" and (isinstance(a, str) or isinstance(b, str)):
        raise EvalError(f"cannot add {_kind(a)} {_show(a)} and {_kind(b)} {_show(b)}")
    x, y = _num(a, op), _num(b, op)
    try:
        if op == "+":
            return EXPR_CONTEXT.add(x, y)
        if op == "-":
            return EXPR_CONTEXT.subtract(x, y)
        if op == "*":
            return EXPR_CONTEXT.multiply(x, y)
        return EXPR_CONTEXT.divide(x, y)
    except DivisionByZero:
        raise EvalError(f"division by zero: {_show(a)} / {_show(b)}") from None
    except ArithmeticError as exc:
        raise EvalError(f"cannot compute {_show(a)} {op} {_show(b)}: {type(exc).__name__}") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _lower(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        return v.lower()
    raise EvalError(f"lower() needs a string, got {_kind(v)} {_show(v)}")


def _upper(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        return v.upper()
    raise EvalError(f"upper() needs a string, got {_kind(v)} {_show(v)}")


def _abs(v: Any) -> Any:
    if v is None:
        return None
    return _num(v, "abs()").copy_abs()


_ONE = Decimal(1)


def _round(v: Any, n: Any = 0) -> Any:
    if v is None or n is None:
        return None
    places = _num(n, "round() places")
    if places != places.to_integral_value() or abs(places) > 1000:
        raise EvalError(f"round() places must be a whole number, got {_show(n)}")
    x = _num(v, "round()")
    try:
        out = x.quantize(_ONE.scaleb(-int(places)), rounding=ROUND_HALF_UP, context=EXPR_CONTEXT)
    except ArithmeticError as exc:
        raise EvalError(f"cannot round {_show(v)} to {int(places)} places: {type(exc).__name__}") from None
    return out.copy_abs() if not out and out.is_signed() else out


def _text(v: Any) -> str:
    cls = v.__class__
    if cls is str:
        return v
    if cls is Decimal or cls is int or cls is float:
        d = _num(v, "concat()")
        if not d.is_finite():
            raise EvalError(f"concat() cannot join {_show(v)}")
        return format(d, "f")
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, str):
        return str(v)
    if isinstance(v, Decimal | int) and not isinstance(v, bool):
        return _text(_num(v, "concat()"))
    raise EvalError(f"concat() needs strings, numbers or times, got {_kind(v)} {_show(v)}")


def _concat(*values: Any) -> str:
    return "".join([_text(v) for v in values if v is not None])


# name -> (min args, max args, implementation, static result kind); coalesce is special (lazy).
_FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Any] | None, str]] = {
    "coalesce": (1, None, None, "any"),
    "now": (0, 0, _now, "value"),
    "lower": (1, 1, _lower, "value"),
    "upper": (1, 1, _upper, "value"),
    "abs": (1, 1, _abs, "value"),
    "round": (1, 2, _round, "value"),
    "concat": (1, None, _concat, "value"),
}
