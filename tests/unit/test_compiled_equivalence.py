"""The Cython-compiled hot modules (cdc/hotpath.py's COMPILED) behave exactly as their .py files: on random
inputs, well-formed and malformed, both give equal results, or raise the same exception type with the same
message (and the same cause).

Both variants live side by side in this process: the pure one is the .py loaded afresh through
`hotpath.PureFinder`, the compiled one the extension module (the one the import finds, or loaded here when
this run has CDC_PURE_PYTHON=1), each with its own copy of the modules in FRESH, so that a pure decoder also
builds its relations with the pure converters. Results are compared structurally (class names, fields, reprs),
since the two variants' classes are distinct objects.

A new hot module is one more entry in CASES: its name, a strategy for its inputs, and how to run one input; a
module of C functions only (cdc.fast.cbytes), one more entry in C_ONLY: the module whose Case calls them.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc import hotpath
from cdc.events import UNCHANGED_TOAST
from cdc.sources.pg_values import CONVERTERS
from tests.unit import test_pgoutput as msgs

# modules that import a listed one and whose objects reach the results (Relation holds pg_values' converters)
FRESH = ("cdc.sources.pgoutput_messages",)
ALLOW_PURE_ENV = "CDC_ALLOW_PURE"  # the tests accept an install without compiled modules (no C compiler)
_CENT = Decimal("0.01")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------ the two variants


def _load_variant(pure: bool) -> dict[str, ModuleType]:
    """COMPILED + FRESH imported anew, as pure Python or compiled, then sys.modules put back as it was."""
    names = (*hotpath.COMPILED, *FRESH)
    saved = {n: sys.modules.pop(n) for n in names if n in sys.modules}
    parents = {n: sys.modules[n.rpartition(".")[0]] for n in names}
    attrs = {n: vars(parents[n]).get(n.rpartition(".")[2]) for n in names}
    finder_was_there = hotpath.PureFinder in sys.meta_path
    hotpath.install_pure_finder() if pure else hotpath.remove_pure_finder()
    try:
        return {n: importlib.import_module(n) for n in names}
    finally:
        for n in names:
            sys.modules.pop(n, None)
            leaf = n.rpartition(".")[2]
            if attrs[n] is None:
                vars(parents[n]).pop(leaf, None)
            else:
                setattr(parents[n], leaf, attrs[n])
        sys.modules.update(saved)
        hotpath.install_pure_finder() if finder_was_there else hotpath.remove_pure_finder()


@functools.cache
def variants() -> tuple[dict[str, ModuleType] | None, dict[str, ModuleType]]:
    """(compiled, pure); compiled is None when an extension is not installed for every listed module.
    (A Cython module is initialised once per process: importing it again gives the same module.)"""
    compiled = None
    if all(hotpath.compiled_origin(n) for n in hotpath.COMPILED):
        compiled = _load_variant(pure=False)
    return compiled, _load_variant(pure=True)


def pair(module: str) -> tuple[ModuleType, ModuleType]:
    compiled, pure = variants()
    if compiled is None:
        why = [v for v in (hotpath.PURE_ENV, ALLOW_PURE_ENV) if os.environ.get(v, "") not in ("", "0")]
        if why:
            pytest.skip(f"{module} is not compiled in this install and {why[0]}=1: nothing to compare")
        pytest.fail(
            f"{module} is not compiled ({hotpath.summary()}): build it (scripts/setup.sh, or "
            f"python setup.py build_ext --inplace), or set {ALLOW_PURE_ENV}=1 on a machine without a C compiler"
        )
    assert hotpath.is_extension(compiled[module].__file__), compiled[module].__file__
    assert pure[module].__file__.endswith(".py"), pure[module].__file__
    return compiled[module], pure[module]


# ------------------------------------------------------------------------------ comparing results


def canon(x: Any) -> Any:
    """A structural form of a result that is equal across the two variants exactly when the results are."""
    kind = f"{type(x).__module__}.{type(x).__qualname__}"
    if isinstance(x, BaseException):
        cause = x.__cause__
        return ("raised", kind, str(x), canon(cause) if cause is not None else None)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (kind, tuple((f.name, canon(getattr(x, f.name))) for f in dataclasses.fields(x)))
    if isinstance(x, dict):  # in order: the decoder's rows keep the columns' order
        return (kind, tuple((canon(k), canon(v)) for k, v in x.items()))
    if isinstance(x, list | tuple):  # NamedTuples (Column) keep their class name in `kind`
        return (kind, tuple(canon(v) for v in x))
    if callable(x) and not isinstance(x, type):  # a converter: which one, not which object
        return ("callable", x.__module__, x.__qualname__)
    return (kind, repr(x))  # repr: NaN equals NaN, -0.0 differs from 0.0, a datetime's tzinfo counts


def outcome(run: Callable[[ModuleType, Any], Any], module: ModuleType, x: Any) -> Any:
    try:
        return canon(run(module, x))
    except Exception as e:
        return canon(e)


# ------------------------------------------------------------------------------ pg_values: text -> value

# every type with a converter, and some without (arrays, interval, unknown): their text as sent
OIDS = sorted({*CONVERTERS, 0, 1007, 1186, 99999})
digits = st.integers(0, 10**6).map(str)


@st.composite
def datetime_text(draw) -> str:
    """Shapes around PostgreSQL's ISO output: odd field widths, years past 9999, BC, 24:00, offsets."""
    y, mo, d = draw(st.integers(0, 120000)), draw(st.integers(0, 13)), draw(st.integers(0, 33))
    h, mi, s = draw(st.integers(0, 25)), draw(st.integers(0, 61)), draw(st.integers(0, 61))
    date = f"{y:04d}-{mo:02d}-{d:02d}"
    time = f"{h:02d}:{mi:02d}" + draw(st.sampled_from(["", f":{s:02d}", f":{s:02d}.{draw(digits)}"]))
    tz = draw(st.sampled_from(["", "+00", "-05", "+05:30", "+05:30:15", "-1234", "+99"]))
    text = draw(st.sampled_from([date, time, f"{date} {time}", f"{date}T{time}"])) + tz
    return text + draw(st.sampled_from(["", "", " BC", "x"]))


value_text = st.one_of(
    st.text(max_size=30),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True).map(repr),
    st.decimals(allow_nan=True).map(str),
    st.sampled_from(["t", "f", "true", "false", "NaN", "Infinity", "-Infinity", "infinity", "-infinity"]),
    datetime_text(),
    st.uuids().map(str),
    st.binary(max_size=12).map(lambda b: "\\x" + b.hex()),
    st.text(alphabet="\\01234567abc", max_size=12),  # bytea's escape format, and broken escapes
)


def run_pg_values(module: ModuleType, x: tuple) -> Any:
    if x[0] == "epoch":
        return module.pg_epoch_us_to_unix_ms(x[1])
    _, oid, text = x
    return module.converter_for(oid), module.converter_for(oid)(text)


pg_values_inputs = st.one_of(
    st.tuples(st.just("convert"), st.sampled_from(OIDS), value_text),
    st.tuples(st.just("epoch"), st.integers(-(2**80), 2**80)),
)

# ------------------------------------------------------------------------------ pgoutput: bytes -> messages

RELS = (16384, 16385)
OTHER_OID = 1  # no Relation message for it: a TerminalError
TAGS = sorted(set(b"BCORYIUDTMSEcAbPKrpZ\x00"))
name = st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\0"), max_size=8)
u8, u32 = st.integers(0, 255), st.integers(0, 2**32 - 1)
u64, i64 = st.integers(0, 2**64 - 1), st.integers(-(2**63), 2**63 - 1)
columns = st.lists(
    st.tuples(st.sampled_from([0, 1, 1, 3, 254]), name, st.sampled_from(OIDS), st.integers(-1, 2**31 - 1)),
    max_size=6,
)


@st.composite
def message(draw, ncols: int) -> bytes:
    """One pgoutput message of any type, mostly well-formed, for a relation of `ncols` columns mostly."""
    oid = draw(st.sampled_from((*RELS, OTHER_OID)))
    if draw(st.integers(0, 4)) == 0:
        ncols = draw(st.integers(0, 7))
    value = st.one_of(st.none(), st.just(UNCHANGED_TOAST), st.binary(max_size=6), value_text)
    row = st.lists(value, min_size=ncols, max_size=ncols)
    kind = draw(st.sampled_from("BCOYRIIUUDDTMx"))
    if kind == "B":
        return msgs.begin_msg(draw(u64), draw(i64), draw(u32))
    if kind == "C":
        return msgs.commit_msg(draw(u8), draw(u64), draw(u64), draw(i64))
    if kind == "O":
        return msgs.origin_msg(draw(u64), draw(name))
    if kind == "Y":
        return msgs.type_msg(draw(u32), draw(name), draw(name))
    if kind == "R":
        return msgs.relation_msg(oid, draw(name), draw(name), draw(st.sampled_from("dnfi")), draw(columns))
    if kind == "I":
        return msgs.insert_msg(oid, draw(row))
    if kind == "U":
        old_kind = draw(st.sampled_from([b"K", b"O", b""]))
        return msgs.update_msg(oid, draw(row), draw(row) if old_kind else None, old_kind)
    if kind == "D":
        return msgs.delete_msg(oid, draw(row), draw(st.sampled_from([b"K", b"O", b"N"])))
    if kind == "T":
        return msgs.truncate_msg(draw(st.lists(st.sampled_from((*RELS, OTHER_OID)), max_size=3)), draw(u8))
    if kind == "M":
        return msgs.logical_msg(draw(u8), draw(u64), draw(name), draw(st.binary(max_size=10)))
    return bytes([draw(st.sampled_from(TAGS))]) + draw(st.binary(max_size=40))


@st.composite
def malformed_or_not(draw, raw: bytes):
    """`raw` as is (most often), cut short, lengthened or with one byte changed; as bytes, bytearray or
    memoryview (the decoder takes all three)."""
    how = draw(st.sampled_from(["as is", "as is", "as is", "cut", "lengthen", "change"]))
    if how == "cut":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "lengthen":
        raw = raw + draw(st.binary(min_size=1, max_size=8))
    elif how == "change" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(u8)]) + raw[i + 1 :]
    return draw(st.sampled_from([bytes, bytearray, memoryview]))(raw)


@st.composite
def stream(draw) -> list:
    """A Relation message (mostly), then messages for it and others."""
    oid, cols = draw(st.sampled_from(RELS)), draw(columns)
    out = [msgs.relation_msg(oid, "public", "t", draw(st.sampled_from("dnfi")), cols)]
    out += draw(st.lists(message(len(cols)), min_size=1, max_size=5))
    return [draw(malformed_or_not(m)) for m in out]


def run_pgoutput(module: ModuleType, messages: list) -> Any:
    """Each message's result or exception, then what the decoder remembers."""
    decoder = module.Decoder()
    results: list = []
    for m in messages:
        try:
            results.append(decoder.decode(m))
        except Exception as e:
            results.append(e)
    return results, decoder.relations, decoder.types


# ------------------------------------------------------------------------------ fast.encode: messages -> COPY lines

ENC_COLS = 3


def _money(d):
    return d.quantize(_CENT)


@st.composite
def encode_input(draw) -> tuple:
    """Insert and Update messages of a 3-column relation (values of every kind, some malformed), random slots
    of every kind (SHIFT's arguments and a money stage's conversion for the others), a key of one or two
    columns, and either form of line (with the position, or lean with a cdc_applied entry)."""
    value = st.one_of(
        st.none(),
        st.just(UNCHANGED_TOAST),
        st.binary(max_size=4),
        value_text,
        st.sampled_from(
            ["123", "-5", "0", "12.50", "NaN", "1e999999999", "tab\there", 'quo"te', "back\\slash", "ünï"]
        ),
    )
    row = st.lists(value, min_size=ENC_COLS, max_size=ENC_COLS)
    raw = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            raw.append(msgs.insert_msg(16384, draw(row)))
        else:
            old = draw(st.sampled_from([b"", b"", b"K"]))
            raw.append(msgs.update_msg(16384, draw(row), draw(row) if old else None, old))
    payloads = [bytes(draw(malformed_or_not(m))) for m in raw]
    how = st.sampled_from([0, 1, 2, 3, 4])
    slot = st.tuples(
        st.integers(0, ENC_COLS - 1), how, st.tuples(st.integers(0, 3), st.sampled_from([b"", b"00"]))
    )
    slots = tuple(
        (src, h, (_money,) if h in (2, 4) else args) for src, h, args in draw(st.lists(slot, max_size=4))
    )
    key_index = tuple(draw(st.lists(st.integers(0, ENC_COLS - 1), min_size=1, max_size=2)))
    if draw(st.booleans()):
        frame = (b"\tu\t1\t", b"\t2\t3\t\\N\n", False)
    else:
        frame = (b'",1,', b',2,3,"u",null]', True)
    return payloads, list(range(len(payloads))), draw(st.integers(0, 2)), slots, key_index, frame


def run_encode(module: ModuleType, x: tuple) -> Any:
    """Where encode_run stopped, and the lines (and entries) it made."""
    payloads, lsns, start, slots, key_index, (mid, tail, lean) = x
    lines: dict = {}
    entries: dict | None = {} if lean else None
    stop = module.encode_run(payloads, lsns, start, ENC_COLS, slots, key_index, mid, tail, lines, entries)
    return (
        stop,
        lines,
        entries,
        [module.copy_text(p) for p in payloads],
        [module.json_text(p) for p in payloads],
    )


def run_encode_c(module: ModuleType, x: tuple) -> Any:
    """encode_c's encode_run and encode_run_mysql (the C line builder; tests/unit/test_encode_c.py has its own
    edges, and MariaDB's other kinds of slot)."""
    payloads, lsns, start, slots, key_index, (mid, tail, lean) = x
    lines: dict = {}
    entries: dict | None = {} if lean else None
    stop = module.encode_run(payloads, lsns, start, ENC_COLS, slots, key_index, mid, tail, lines, entries)
    tuples: dict = {}
    tuple_entries: dict = {}
    args = (payloads, lsns, start, ENC_COLS, slots, key_index, b'",1,', b',2,3,"u",null]')
    stop_mysql = module.encode_run_mysql(*args, tuples, tuple_entries)
    return stop, lines, entries, stop_mysql, tuples, tuple_entries


# ------------------------------------------------------------------------------ fast.encode_mysql: messages -> VALUES

times = st.one_of(
    datetime_text(),
    st.sampled_from(
        ["2024-05-06 07:08:09.123456+00", "2024-05-06 07:08:09.5", "2024-05-06 07:08:09.000+05:30"]
    ),
)


@st.composite
def encode_mysql_input(draw) -> tuple:
    """encode_input's messages, slots of every MariaDB kind (times and numbers among the values), the lean
    form only."""
    payloads, lsns, start, _, key_index, _ = draw(encode_input())
    extra = st.sampled_from(["0.0000001", "-0.000000", "1E+3", "Infinity", "-", "", "t", "f"])
    if draw(st.booleans()):  # messages with times and numbers where the slots read them
        value = st.one_of(st.none(), times, extra, value_text)
        payloads += [
            bytes(
                draw(malformed_or_not(msgs.insert_msg(16384, draw(st.lists(value, min_size=3, max_size=3)))))
            )
        ]
        lsns = list(range(len(payloads)))
    slot = st.tuples(
        st.integers(0, ENC_COLS - 1),
        st.integers(0, 8),
        st.tuples(st.integers(0, 3), st.sampled_from([b"", b"00"])),
    )
    slots = tuple(
        (src, h, (_money,) if h in (2, 4) else args) for src, h, args in draw(st.lists(slot, max_size=4))
    )
    return payloads, lsns, start, slots, key_index, [draw(times) for _ in range(3)]


def run_encode_mysql(module: ModuleType, x: tuple) -> Any:
    """Where encode_run stopped, the tuples and entries it made, and the literal helpers on the values."""
    payloads, lsns, start, slots, key_index, texts = x
    lines: dict = {}
    entries: dict = {}
    stop = module.encode_run(
        payloads, lsns, start, ENC_COLS, slots, key_index, b'",1,', b',2,3,"u",null]', lines, entries
    )
    raw = [*payloads, *(t.encode() for t in texts)]
    return (
        stop,
        lines,
        entries,
        [(module.mysql_text(p), module.mysql_text_nbe(p), module.mysql_datetime(p)) for p in raw],
    )


# ------------------------------------------------------------------------------ sources.pg_run: frames -> a run


@st.composite
def frames_input(draw) -> tuple:
    """What get_copy_data returns, in turn: XLogData frames of inserts and updates of two relations (some
    malformed), other messages, keepalives, and the ends (0: nothing buffered, -1: the copy ended); the run's
    relation and limit."""
    values = st.lists(st.one_of(st.none(), st.text(max_size=3)), min_size=1, max_size=3)
    out = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["I", "I", "U", "U", "other", "keepalive", "end", "idle"]))
        if kind in ("end", "idle"):
            out.append((-1 if kind == "end" else 0, b""))
            continue
        if kind == "keepalive":
            body = b"k" + draw(st.binary(min_size=17, max_size=17))
        else:
            oid = draw(st.sampled_from([16384, 16384, 16385]))
            if kind == "I":
                msg = msgs.insert_msg(oid, draw(values))
            elif kind == "U":
                msg = msgs.update_msg(oid, draw(values))
            else:
                msg = draw(st.sampled_from([b"C", b"R", b"B"])) + draw(st.binary(max_size=30))
            header = b"w" + draw(st.binary(min_size=24, max_size=24))
            body = draw(malformed_or_not(header + msg))
        out.append((len(body), body))
    return out, draw(st.sampled_from([16384, 16385])), draw(st.integers(1, 6))


class FrameFeed:
    """get_copy_data over a list; past its end, nothing buffered."""

    def __init__(self, frames: list):
        self.frames, self.i = frames, 0

    def get_copy_data(self, _async: int) -> tuple:
        if self.i >= len(self.frames):
            return 0, b""
        self.i += 1
        return self.frames[self.i - 1]


def run_pg_run(module: ModuleType, x: tuple) -> Any:
    """take_run's return (the pending frame as bytes), the run and positions it appended, frames read."""
    frames, oid, limit = x
    feed, run, lsns = FrameFeed(frames), [], []
    pending, inserts, wal_end = module.take_run(feed, run, lsns, oid, limit)
    if pending is not None:
        pending = (pending[0], bytes(pending[1]))
    return pending, inserts, wal_end, run, lsns, feed.i


# ------------------------------------------------------------------------------ the cases


@dataclasses.dataclass(frozen=True)
class Case:
    module: str  # as listed in cdc/hotpath.py's COMPILED
    inputs: st.SearchStrategy
    run: Callable[[ModuleType, Any], Any]  # (the module, one input) -> result; exceptions are compared too


CASES = [
    Case("cdc.sources.pg_values", pg_values_inputs, run_pg_values),
    Case("cdc.sources.pgoutput", stream(), run_pgoutput),
    Case("cdc.fast.encode", encode_input(), run_encode),
    Case("cdc.fast.encode_c", encode_input(), run_encode_c),
    Case("cdc.fast.encode_mysql", encode_mysql_input(), run_encode_mysql),
    Case("cdc.sources.pg_run", frames_input(), run_pg_run),
]
# listed modules with no Python functions to call (C functions, which another listed module cimports): that
# module's Case runs them, the compiled variant its compiled C functions, the pure one their .py
C_ONLY = {"cdc.fast.cbytes": "cdc.fast.encode_c"}


def test_every_compiled_module_has_a_case():
    assert sorted([*(c.module for c in CASES), *C_ONLY]) == sorted(hotpath.COMPILED), (
        "each module in cdc/hotpath.py's COMPILED needs a Case here (its inputs, how to run one), or an "
        "entry in C_ONLY"
    )
    assert set(C_ONLY.values()) <= {c.module for c in CASES}


@pytest.mark.parametrize("module", sorted(C_ONLY))
def test_c_only_modules_export_every_c_function(module):
    """Its .pxd declares each C function of its .py (compiled: exported for cimport, in `__pyx_capi__`)."""
    compiled, pure = pair(module)
    defined = {n for n, v in vars(pure).items() if _c_only(v) and v.__module__ == pure.__name__}
    assert defined and sorted(compiled.__pyx_capi__) == sorted(defined)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.module)
def test_compiled_and_pure_agree(case):
    compiled, pure = pair(case.module)

    @SETTINGS
    @given(case.inputs)
    def agree(x):
        assert outcome(case.run, compiled, x) == outcome(case.run, pure, x)

    agree()


def test_the_comparison_sees_decoded_rows():
    """Not vacuous: well-formed messages decode on both sides, to rows with converted values."""
    compiled, pure = pair("cdc.sources.pgoutput")
    stream = [msgs.relation_msg(msgs.PRODUCTS, "public", "products", "d", msgs.PRODUCT_COLS)]
    stream += [raw for _, raw in msgs.valid_messages()]
    result = outcome(run_pgoutput, compiled, stream)
    assert result == outcome(run_pgoutput, pure, stream)
    assert "raised" not in repr(result)
    assert "Decimal('19.99')" in repr(result) and "_to_datetime" in repr(result)


def shape(module: ModuleType) -> dict[str, Any]:
    """What a module defines, as its users see it: names, classes (MRO, __slots__, dataclass fields, members)
    and the signatures of its functions. Not compared: `annotations` (the __future__ feature, which a compiled
    module does not keep as a name), `cython` (Cython's declarations: compile-time only when compiled),
    functions declared `@cython.cfunc` and module variables made by `cython.declare` (C functions and
    variables, which a compiled module does not show as names) and dunders (a compiled module adds __test__,
    lacks __cached__)."""
    out: dict[str, Any] = {}
    c_vars = _c_variables(module)
    for name, value in vars(module).items():
        if name.startswith("__") or name in ("annotations", "cython") or _c_only(value) or name in c_vars:
            continue
        if isinstance(value, type) and value.__module__ == module.__name__:
            fields = dataclasses.fields(value) if dataclasses.is_dataclass(value) else ()
            out[name] = (
                [c.__qualname__ for c in value.__mro__],
                getattr(value, "__slots__", None),
                [(f.name, f.type, repr(f.default), f.init, f.compare) for f in fields],
                {k: shape_of(v) for k, v in vars(value).items() if k not in ("__doc__", "__module__")},
            )
        else:
            out[name] = shape_of(value)
    return out


def _c_variables(module: ModuleType) -> set[str]:
    """The names a module's source assigns at its top level from `cython.declare(...)`."""
    source = Path(module.__file__).parent / (module.__name__.rpartition(".")[2] + ".py")
    names = set()
    for node in ast.parse(source.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func) == "cython.declare"
        ):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _c_only(value: Any) -> bool:
    """A pure module's function declared with @cython.cfunc (compiled, it is no Python name)."""
    return inspect.isfunction(value) and inspect.getsource(value).lstrip().startswith("@cython.cfunc")


def shape_of(value: Any) -> Any:
    if (
        callable(value)
        and not isinstance(value, type)
        and (getattr(value, "__module__", None) or "").startswith("cdc.")
    ):
        return ("callable", value.__qualname__, str(inspect.signature(value)), value.__doc__)
    return canon(value)


@pytest.mark.parametrize("module", hotpath.COMPILED)
def test_compiled_modules_define_the_same_names_classes_and_signatures(module):
    compiled, pure = pair(module)
    assert shape(compiled) == shape(pure)
