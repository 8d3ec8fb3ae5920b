"""A small, safe expression language for stage configs (`filter: where: "price > 0 and status in ('a', 'b')"`).

The text is parsed with `ast.parse(text, mode="eval")` and the tree is walked against a strict whitelist of
node types; it is compiled once into nested Python closures, so evaluating a row costs a few function calls.
User text is never passed to eval/exec/compile.

Language:

* field names resolve from the row dict; a field the row lacks raises `MissingField` (missing is not null);
* literals: 'strings', numbers (always `Decimal`, built from the literal's source text, never a float),
  `null`/`None`, `true`/`false`/`True`/`False`;
* comparisons `== != < <= > >=` (chained: `0 < x <= 10`), `x in (..)` / `x not in [..]` with a literal list,
  `x is null` / `x is not null` (also `is None`);
* `and`, `or`, `not`, parentheses;
* arithmetic `+ - * /` and unary minus on numbers (ints become Decimal; `+` on two strings concatenates);
* functions: coalesce(a, b, ...), now(), lower(s), upper(s), abs(x), round(x[, n]), concat(a, b, ...).

`now()` is the current time as an aware UTC datetime. `concat(...)` joins its arguments as text like SQL's
concat(): nulls are skipped, strings as they are, numbers in plain notation (Decimal('1E+2') -> '100', a
float via its shortest repr), dates and times in ISO format; anything else (booleans...) raises EvalError.

Null semantics (SQL-ish): a comparison or `in`/`not in` with a null operand is false (`is null` excepted);
arithmetic and lower/upper/abs/round of null give null; in a boolean context null counts as false, so
`not (x == 1)` is true when x is null. `and`/`or`/`not` accept only true/false/null operands.

Comparing values of different kinds (a string with a number, a boolean with a number...) raises `EvalError`
(a TypeError) at evaluation, even for `==`: a silent false in a filter would silently drop rows. A float in
a row is compared and computed as the Decimal of its shortest repr (so a float 0.1 equals the literal 0.1).
Arithmetic uses `EXPR_CONTEXT` (100 significant digits, half-even, traps on division by zero, invalid
operations and overflow), so sums and products of numeric(38) values are exact.
"""

from __future__ import annotations

import ast
import re
import warnings
from typing import Any

from cdc.stages.expr_compile import ExprError, Fn, MissingField, _Compiler
from cdc.stages.expr_values import (
    EXPR_CONTEXT,
    EvalError,
)

__all__ = ["EXPR_CONTEXT", "EvalError", "Expr", "ExprError", "MissingField", "parse_expr"]

MAX_LENGTH = 4000  # characters of expression text


class Expr:
    """A compiled expression. `expr(row)` evaluates it on a row dict."""

    __slots__ = ("text", "fields", "_fn", "_result")

    def __init__(self, text: str, fields: frozenset[str], fn: Fn, result: str):
        self.text = text
        self.fields = fields
        self._fn = fn
        self._result = result  # static result kind: "bool", "value", "null" or "any"

    def __call__(self, row: dict) -> Any:
        return self._fn(row)

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"


def parse_expr(text: str) -> Expr:
    """Parse and compile `text`; raises ExprError for bad syntax or a construct outside the language."""
    if not isinstance(text, str):
        raise ExprError(f"an expression must be a string, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression is too long ({len(text)} characters; at most {MAX_LENGTH})")
    # Newlines (a YAML block scalar) become spaces so columns stay put; leading blanks are skipped.
    src = text.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    body = src.lstrip()
    if not body.strip():
        raise ExprError("empty expression")
    lead = len(src) - len(body)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(body, mode="eval")
    except SyntaxError as exc:
        col = lead + (exc.offset or 1)
        raise ExprError(
            f"invalid expression {_clip(text)!r}: {exc.msg} at column {col}{_syntax_hint(body)}", col
        ) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ExprError(f"invalid expression {_clip(text)!r}: {exc}") from None
    compiler = _Compiler(body, lead, _clip(text))
    node = compiler.compile(tree.body, 0)
    return Expr(text.strip(), frozenset(compiler.fields), node.fn, node.kind)


def _clip(text: str, limit: int = 80) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _syntax_hint(body: str) -> str:
    hints = []
    if re.search(r"(?<![=!<>])=(?!=)", body):
        hints.append("use == to compare")
    if "<>" in body:
        hints.append("use != for 'not equal'")
    if re.search(r"\b(AND|OR|NOT|NULL|IS|IN|TRUE|FALSE)\b", body):
        hints.append("keywords are lowercase: and, or, not, is null, in, true, false")
    return f" ({'; '.join(hints)})" if hints else ""
