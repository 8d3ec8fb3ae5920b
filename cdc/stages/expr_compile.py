"""The expression language's compiler (cdc/stages/expr.py parses the text): a whitelisted Python AST walked into
nested closures, each node with its static result kind; the errors it raises at parse and evaluation time."""

from __future__ import annotations

import ast
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc.stages.expr_values import (
    _CMP_OPS,
    _COMPARE,
    _FUNCTIONS,
    EvalError,
    _arith,
    _kind,
    _num,
    _show,
    _truth,
)

MAX_DEPTH = 64  # nesting of the expression tree

Fn = Callable[[dict], Any]


class ExprError(ValueError):
    """The expression text is not valid (syntax, or a construct outside the language). Raised at parse time."""

    def __init__(self, message: str, column: int | None = None):
        super().__init__(message)
        self.column = column  # 1-based column in the expression text, when known


class MissingField(Exception):
    """Raised at evaluation when the row lacks a field the expression reads."""

    def __init__(self, field: str):
        super().__init__(f"row has no field {field!r}")
        self.field = field


_NAMED_CONSTANTS = {"null": None, "None": None, "true": True, "True": True, "false": False, "False": False}

# friendly names for rejected node types
_CONSTRUCTS = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscript",
    ast.Slice: "slice",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.IfExp: "conditional expression (x if c else y)",
    ast.NamedExpr: "assignment expression (:=)",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Dict: "dict literal",
    ast.Set: "set literal",
    ast.List: "list literal (allowed only after 'in'/'not in')",
    ast.Tuple: "tuple (allowed only after 'in'/'not in')",
    ast.JoinedStr: "f-string",
    ast.FormattedValue: "f-string",
    ast.Starred: "starred argument",
}
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_OTHER_BINOPS = {
    ast.Mod: "%",
    ast.Pow: "**",
    ast.FloorDiv: "//",
    ast.MatMult: "@",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.BitXor: "^",
}

_NOCONST = object()


class _Node:
    __slots__ = ("fn", "kind", "const")

    def __init__(self, fn: Fn, kind: str, const: Any = _NOCONST):
        self.fn = fn
        self.kind = kind  # "bool" | "value" | "null" | "any"
        self.const = const


def _const_node(value: Any) -> _Node:
    kind = "bool" if isinstance(value, bool) else "null" if value is None else "value"
    return _Node(lambda row, _v=value: _v, kind, value)


class _Compiler:
    def __init__(self, src: str, lead: int, text: str):
        self.src = src
        self.lead = lead
        self.text = text
        self.fields: set[str] = set()

    # -- errors

    def column(self, node: ast.AST) -> int:
        """1-based character column of `node` in the original text (col_offset counts UTF-8 bytes)."""
        byte_col = getattr(node, "col_offset", 0)
        char_col = len(self.src.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        return self.lead + char_col + 1

    def error(self, node: ast.AST, what: str) -> ExprError:
        col = self.column(node)
        return ExprError(f"{what} at column {col} in expression {self.text!r}", col)

    def reject(self, node: ast.AST) -> ExprError:
        what = _CONSTRUCTS.get(type(node))
        if what is None:
            what = f"{type(node).__name__} (not part of the expression language)"
        seg = ast.get_source_segment(self.src, node)
        if seg and len(seg) <= 40:
            what = f"{what} {seg!r}"
        return self.error(node, f"{what} is not allowed")

    # -- compile

    def compile(self, node: ast.AST, depth: int) -> _Node:
        if depth > MAX_DEPTH:
            raise self.error(node, f"expression is nested too deeply (more than {MAX_DEPTH} levels)")
        depth += 1
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.BinOp):
            return self.binop(node, depth)
        if isinstance(node, ast.Compare):
            return self.compare(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise self.reject(node)

    def constant(self, node: ast.Constant) -> _Node:
        v = node.value
        if v is None or isinstance(v, bool | str):
            return _const_node(v)
        if isinstance(v, int | float):
            seg = ast.get_source_segment(self.src, node) or ""
            try:
                d = Decimal(seg)
            except (InvalidOperation, ValueError):
                if not isinstance(v, int):  # pragma: no cover - every float literal is valid Decimal text
                    raise self.error(node, f"number {seg!r} is not allowed") from None
                d = Decimal(v)  # 0x1F, 0o17, 0b101: exact from the int value
            return _const_node(d)
        if isinstance(v, complex):
            raise self.error(
                node, f"complex number {ast.get_source_segment(self.src, node)!r} is not allowed"
            )
        if isinstance(v, bytes):
            raise self.error(node, "bytes literal is not allowed")
        raise self.error(node, f"literal {v!r} is not allowed")

    def name(self, node: ast.Name) -> _Node:
        name = node.id
        if name in _NAMED_CONSTANTS:
            return _const_node(_NAMED_CONSTANTS[name])
        if name.startswith("__") or name.endswith("__"):
            raise self.error(node, f"dunder name {name!r} is not allowed")
        self.fields.add(name)

        def get(row: dict, _n: str = name) -> Any:
            try:
                return row[_n]
            except KeyError:
                raise MissingField(_n) from None

        return _Node(get, "any")

    def operand(self, node: ast.AST, depth: int, what: str) -> _Node:
        c = self.compile(node, depth)
        if c.kind == "value":
            raise self.error(node, f"{what} needs a condition (true/false), not a value")
        return c

    def boolop(self, node: ast.BoolOp, depth: int) -> _Node:
        word = "and" if isinstance(node.op, ast.And) else "or"
        fns = tuple(self.operand(v, depth, f"'{word}'").fn for v in node.values)
        what = f"'{word}'"
        if isinstance(node.op, ast.And):

            def fn(row: dict) -> bool:
                for f in fns:
                    if not _truth(f(row), what):
                        return False
                return True

        else:

            def fn(row: dict) -> bool:
                for f in fns:
                    if _truth(f(row), what):
                        return True
                return False

        return _Node(fn, "bool")

    def unary(self, node: ast.UnaryOp, depth: int) -> _Node:
        if isinstance(node.op, ast.Not):
            inner = self.operand(node.operand, depth, "'not'").fn

            def not_(row: dict) -> bool:
                return not _truth(inner(row), "'not'")

            return _Node(not_, "bool")
        if isinstance(node.op, ast.USub | ast.UAdd):
            c = self.compile(node.operand, depth)
            neg = isinstance(node.op, ast.USub)
            sym = "-" if neg else "+"
            if c.const is not _NOCONST:
                if not isinstance(c.const, Decimal):
                    raise self.error(node, f"unary {sym} needs a number, not {_kind(c.const)}")
                return _const_node(c.const.copy_negate() if neg else c.const)
            inner = c.fn

            def minus(row: dict) -> Any:
                v = inner(row)
                if v is None:
                    return None
                d = _num(v, f"unary {sym}")
                return d.copy_negate() if neg else d

            return _Node(minus, "value")
        raise self.error(node, "operator '~' is not allowed")

    def binop(self, node: ast.BinOp, depth: int) -> _Node:
        sym = _BINOPS.get(type(node.op))
        if sym is None:
            op = _OTHER_BINOPS.get(type(node.op), type(node.op).__name__)
            raise self.error(node, f"operator '{op}' is not allowed (only + - * /)")
        left = self.compile(node.left, depth)
        right = self.compile(node.right, depth)
        for side in (left, right):
            if side.kind == "bool":
                raise self.error(node, f"operator '{sym}' needs numbers (or strings for +), not a condition")
        lf, rf = left.fn, right.fn

        def arith(row: dict) -> Any:
            return _arith(lf(row), rf(row), sym)

        return _Node(arith, "value")

    def compare(self, node: ast.Compare, depth: int) -> _Node:
        ops = node.ops
        if len(ops) > 1:
            for op in ops:
                if not isinstance(op, tuple(_CMP_OPS)):
                    raise self.error(
                        node, "'in', 'not in', 'is null' and 'is not null' cannot be chained with comparisons"
                    )
        op = ops[0]
        if isinstance(op, ast.Is | ast.IsNot):
            right = node.comparators[0]
            is_null = (isinstance(right, ast.Constant) and right.value is None) or (
                isinstance(right, ast.Name) and right.id in ("null", "None")
            )
            if not is_null:
                raise self.error(right, "only 'is null' and 'is not null' are supported after 'is'")
            inner = self.compile(node.left, depth).fn
            if isinstance(op, ast.Is):
                return _Node(lambda row: inner(row) is None, "bool")
            return _Node(lambda row: inner(row) is not None, "bool")
        if isinstance(op, ast.In | ast.NotIn):
            return self.membership(node, depth, isinstance(op, ast.NotIn))

        operands = [self.compile(n, depth) for n in (node.left, *node.comparators)]
        for i, op in enumerate(ops):
            a, b = operands[i], operands[i + 1]
            if a.const is not _NOCONST and b.const is not _NOCONST:
                ka, kb = _kind(a.const), _kind(b.const)
                if "null" not in (ka, kb) and ka != kb:
                    sym = _CMP_OPS[type(op)][0]
                    raise self.error(node, f"cannot compare {ka} with {kb} using {sym}")
        cmps = [_COMPARE[type(op)] for op in ops]
        if len(ops) == 1:
            lf, rf, c = operands[0].fn, operands[1].fn, cmps[0]
            return _Node(lambda row: c(lf(row), rf(row)), "bool")
        fns = [o.fn for o in operands]
        pairs = tuple(zip(cmps, fns[1:], strict=True))
        first = fns[0]

        def chain(row: dict) -> bool:
            a = first(row)
            for c, f in pairs:
                b = f(row)
                if not c(a, b):
                    return False
                a = b
            return True

        return _Node(chain, "bool")

    def membership(self, node: ast.Compare, depth: int, negate: bool) -> _Node:
        word = "not in" if negate else "in"
        container = node.comparators[0]
        if not isinstance(container, ast.List | ast.Tuple):
            raise self.error(container, f"'{word}' needs a literal list, e.g. x {word} ('a', 'b')")
        values = []
        for elt in container.elts:
            c = self.compile(elt, depth)
            if c.const is _NOCONST:
                raise self.error(elt, f"the list after '{word}' may hold only literals")
            values.append(c.const)
        has_null = any(v is None for v in values)
        members = frozenset(v for v in values if v is not None)
        kinds = {_kind(v) for v in members}
        classes: set[type] = set()
        for k in kinds:
            classes |= {"number": {int, Decimal, float}, "string": {str}, "boolean": {bool}}[k]
        inner = self.compile(node.left, depth).fn
        kinds_text = " or ".join(sorted(kinds))

        def contains(row: dict) -> bool:
            v = inner(row)
            if v is None:
                return False
            cls = v.__class__
            if cls not in classes:
                k = _kind(v)
                if k not in kinds:
                    if not members:
                        return negate and not has_null
                    raise EvalError(f"cannot test {k} {_show(v)} '{word}' a list of {kinds_text}")
            if cls is float:
                v = Decimal(repr(v))
            try:
                found = v in members
            except (TypeError, ValueError) as exc:
                raise EvalError(f"cannot test {_show(v)} '{word}' a list: {exc}") from None
            if found:
                return not negate
            return negate and not has_null  # SQL: x not in (.., null) is never true

        return _Node(contains, "bool")

    def call(self, node: ast.Call, depth: int) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self.reject(node.func)
        name = node.func.id
        if name.startswith("__") or name.endswith("__"):
            raise self.error(node, f"dunder name {name!r} is not allowed")
        spec = _FUNCTIONS.get(name)
        if spec is None:
            known = ", ".join(_FUNCTIONS)
            raise self.error(node, f"unknown function {name!r} (known: {known})")
        if node.keywords:
            raise self.error(node, f"keyword arguments are not allowed in {name}()")
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise self.reject(a)
        lo, hi, impl, kind = spec
        n = len(node.args)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise self.error(node, f"{name}() takes {want} argument(s), got {n}")
        args = tuple(self.compile(a, depth).fn for a in node.args)
        if name == "coalesce":

            def coalesce(row: dict) -> Any:
                for f in args:
                    v = f(row)
                    if v is not None:
                        return v
                return None

            return _Node(coalesce, kind)
        assert impl is not None
        if n == 0:
            return _Node(lambda row: impl(), kind)
        if n == 1:
            a0 = args[0]
            return _Node(lambda row: impl(a0(row)), kind)
        if name == "round" and n == 2:
            a0, a1 = args
            return _Node(lambda row: impl(a0(row), a1(row)), kind)
        return _Node(lambda row: impl(*(f(row) for f in args)), kind)  # pragma: no cover
