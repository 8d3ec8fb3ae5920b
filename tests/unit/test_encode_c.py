"""cdc/fast/encode_c.py (the C line builder) against encode.py's encode_run, byte for byte, on random messages
and slots (hypothesis): the same lines and entries in the same order, the same index returned, the same
exception raised. Compiled, this holds the C code to encode.py; interpreted (CDC_PURE_PYTHON=1), encode_c
calls encode.py, and the test holds trivially. test_fast_encode holds both to the reference path's rows."""

from __future__ import annotations

import struct
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cdc.fast import encode, encode_c, encode_mysql
from cdc.fast.encode import CHECK, MONEY, PASS, SHIFT, TEXT
from cdc.fast.encode_mysql import BOOL, DATETIME, NUMBER, TEXT_NBE

SPECIAL = st.sampled_from(
    [b"\t", b"\n", b"\\", b"\r", b"\b", b"\v", b"\f", b'"', b"'", b"\x1a", b"\x00", b"\x7f", "é".encode()]
)
TEXTS = st.one_of(
    st.binary(max_size=10),
    st.lists(st.one_of(SPECIAL, st.binary(max_size=3)), max_size=6).map(b"".join),
    st.integers(16000, 17000).map(lambda n: b"x" * n),  # past the C buffer: encode.py's way
    st.integers(8000, 9000).map(lambda n: b"\t" * n),  # past it once escaped
)
INTS = st.one_of(st.integers(-(10**12), 10**12), st.sampled_from([0, -1, 5, -5, 10, -10])).map(
    lambda i: str(i).encode()
) | st.sampled_from([b"-0", b"-000", b"007"])  # (not PostgreSQL's text, but the same either way)
NUMERICS = st.decimals(-(10**6), 10**6, allow_nan=False, places=4).map(
    lambda d: str(d).encode()
) | st.sampled_from([b"NaN", b"Infinity", b"1E+3", b"abc", b"-0.005", b"12.5", b"0.00", b"-3"])


def _cent(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.01"), ROUND_HALF_UP)


def _too_big(d: Decimal) -> Decimal:
    if abs(d) > 990_000:
        raise ArithmeticError("too large")
    return d


SLOT = st.one_of(  # (how, its arguments)
    st.tuples(st.sampled_from([PASS, TEXT]), st.just(())),
    st.tuples(st.just(SHIFT), st.tuples(st.integers(0, 4), st.sampled_from([b"", b"0", b"00"]))),
    st.tuples(st.just(MONEY), st.sampled_from([(_cent,), (_too_big, _cent), ()])),
    st.tuples(st.just(CHECK), st.just((_too_big,))),
)
MYSQL_SLOT = st.one_of(SLOT, st.tuples(st.sampled_from([TEXT_NBE, NUMBER, BOOL, DATETIME]), st.just(())))
TIMES = st.sampled_from(
    [b"2024-05-06 07:08:09", b"2024-05-06 07:08:09.5+05:30", b"2024-05-06 07:08:09.000+00"] * 3
    + [b"2024-05-06 07:08:09.123456-08", b"0001-01-01 00:00:00 BC", b"2024-05-06", b"x", b"infinity"]
)
VALUES = {
    PASS: TEXTS,
    TEXT: TEXTS,
    SHIFT: INTS,
    MONEY: NUMERICS,
    CHECK: NUMERICS,
    TEXT_NBE: TEXTS,
    NUMBER: st.sampled_from(
        [b"0.0000001", b"-0.00000012", b"0.0000000", b"0.000001", b"-", b"", b"0.0000010"]
    )
    | NUMERICS,
    BOOL: st.sampled_from([b"t", b"f"] * 6 + [b"x", b"tt", b""]),
    DATETIME: TIMES,
}
KEYS = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=8).map(str.encode),
    st.binary(max_size=6),
    SPECIAL,
    st.lists(SPECIAL, max_size=3).map(b"".join),
)


def _message(values: list, shape: str) -> bytes:
    out = b"I" + struct.pack("!I", 16500) + (b"O" if shape == "old" else b"N")
    out += struct.pack("!H", len(values) + (shape == "count"))
    for v in values:
        if v is None:
            out += b"n"
        elif v == "toast":
            out += b"u"
        else:
            out += b"t" + struct.pack("!I", len(v)) + v
    return out[:-1] if shape == "short" else out


@st.composite
def runs(draw, mysql: bool = False):
    kinds = draw(st.lists(MYSQL_SLOT if mysql else SLOT, min_size=1, max_size=5))
    ncols = len(kinds)
    key_index = draw(st.sampled_from([(0,), (0,), (0,), (0, ncols - 1)]))
    for j in key_index:  # a key column's text goes as it is (plan.py: no money stage on a key)
        kinds[j] = (draw(st.sampled_from([PASS, TEXT])), ())
    order = draw(st.permutations(range(ncols)))
    slots = tuple((j, kinds[j][0], kinds[j][1]) for j in order if kinds[j][0] != CHECK)
    slots += tuple((j, CHECK, kinds[j][1]) for j in order if kinds[j][0] == CHECK)
    msgs = []
    for _ in range(draw(st.integers(1, 8))):
        values = []
        for j, (how, _) in enumerate(kinds):
            values_of = KEYS if j in key_index and how in (PASS, TEXT) else VALUES[how]
            value = draw(values_of) if draw(st.integers(0, 8)) else None
            if value is None and (j in key_index or not draw(st.integers(0, 4))):
                value = "toast" if not draw(st.integers(0, 4)) else b"1"  # (a NULL key: now and then)
            values.append(value)
        shape = draw(st.sampled_from(["ok"] * 30 + ["old", "count", "short"]))
        msgs.append(_message(values, shape))
    lsns = draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(msgs), max_size=len(msgs)))
    lean = True if mysql else draw(st.booleans())  # (MariaDB's tuples: lean only)
    return msgs, lsns, ncols, slots, key_index, lean


def _run(fn, msgs, lsns, ncols, slots, key_index, lean):
    mid, tail = (b'",7,', b',8,9,"u",null]') if lean else (b"\tu\t7\t", b"\t8\t9\t\\N\n")
    lines: dict = {}
    entries: dict | None = {} if lean else None
    try:
        done = fn(msgs, lsns, 0, ncols, slots, key_index, mid, tail, lines, entries)
    except Exception as e:  # noqa: BLE001 - the same error either way
        done = type(e)
    return done, list(lines.items()), None if entries is None else list(entries.items())


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_c_lines_are_encode_py_lines(run):
    got = _run(encode_c.encode_run, *run)
    assert got == _run(encode.encode_run, *run)
    event(f"encoded {got[0] if isinstance(got[0], int) else got[0].__name__} of {len(run[0])}")
    event("lean" if run[-1] else "copy")


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(mysql=True))
def test_c_tuples_are_encode_mysql_py_tuples(run):
    got = _run(encode_c.encode_run_mysql, *run)
    assert got == _run(encode_mysql.encode_run, *run)
    event(f"encoded {got[0] if isinstance(got[0], int) else got[0].__name__} of {len(run[0])}")


def test_a_line_past_the_buffer_and_a_key_json_escapes_go_encode_py_s_way():
    slots = ((0, TEXT, ()), (1, TEXT, ()))
    long_value = b"a\tb" * 6000  # 18 kB, escaped: 24 kB
    msgs = [
        _message([b"k1", long_value], "ok"),
        _message([b'k"2', b"v"], "ok"),
        _message([b"k3", b"v"], "ok"),
    ]
    for lean in (False, True):
        got = _run(encode_c.encode_run, msgs, [1, 2, 3], 2, slots, (0,), lean)
        assert got == _run(encode.encode_run, msgs, [1, 2, 3], 2, slots, (0,), lean)
        assert got[0] == 3 and len(got[1]) == 3
        assert (
            got[1][0][1].startswith(b"k1\ta\\tba\\tb") if not lean else got[2][1][1].startswith(b'["k\\"2"')
        )
    got = _run(encode_c.encode_run_mysql, msgs, [1, 2, 3], 2, slots, (0,), True)
    assert got == _run(encode_mysql.encode_run, msgs, [1, 2, 3], 2, slots, (0,), True)
    assert (
        got[0] == 3 and got[1][0][1].startswith(b"('k1','a\tba\tb") and got[2][1][1].startswith(b'["k\\"2"')
    )


def test_a_value_c_leaves_is_encode_py_s_from_there_in_its_slots_order():
    """An empty integer text for SHIFT (which PostgreSQL never sends) raises in encode.py before a later money
    slot could stop the run: the C code hands the message over at that slot, so the same happens."""
    slots = ((0, SHIFT, (0, b"")), (1, MONEY, (_cent,)))
    msgs = [_message([b"", b"NaN"], "ok")]
    for fn, ref in (
        (encode_c.encode_run, encode.encode_run),
        (encode_c.encode_run_mysql, encode_mysql.encode_run),
    ):
        got = _run(fn, msgs, [1], 2, slots, (1,), True)
        assert got == _run(ref, msgs, [1], 2, slots, (1,), True)
        assert got[0] is IndexError
