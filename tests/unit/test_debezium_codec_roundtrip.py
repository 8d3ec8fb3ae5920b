"""Property tests: random rows encoded by EnvelopeEncoder and decoded by EnvelopeDecoder.

What must come back, per converter shape and decimal mode (docs/kafka-events.md, "What round-trips"):
- schemas on, precise: every value exactly, same type and value; a Decimal keeps its scale; an aware datetime or
  time comes back as the same instant in UTC; a negative Decimal zero comes back as zero (bytes have no sign of
  zero).
- schemas on, string: the same, except that a Decimal comes back as its plain string (format(d, "f")).
- schemas on, double: the same, except that a Decimal comes back as the Decimal of the double's shortest text.
- schemas off: ints, strings, bools, None, UNCHANGED_TOAST exactly; an unconstrained-numeric Decimal exactly
  (VariableScaleDecimal is an object); everything else as its JSON form: a fixed-scale Decimal as base64 of
  its unscaled value (precise) or its plain string (string), a date as days since 1970, a naive datetime as µs
  since 1970, a naive time as µs since midnight, an aware datetime/time as its UTC ISO string, bytes as base64,
  a UUID as its string.
A string equal to Debezium's placeholder comes back as UNCHANGED_TOAST (so does, without a schema, the base64 of
the placeholder's bytes): the generators leave those out.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.connect_schema import EXACT, PLACEHOLDER, PLACEHOLDER_B64, PLACEHOLDER_BYTES, int_to_b64
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.sinks.envelope import EnvelopeEncoder
from cdc.sources.debezium import EnvelopeDecoder

UTC = dt.UTC
DEC = EnvelopeDecoder()

decimals = st.builds(
    lambda sign, digits, exp: Decimal((sign, tuple(int(c) for c in str(digits)), exp)),
    st.integers(0, 1),
    st.integers(0, 10**30),
    st.integers(-20, 4),
)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))
aware = st.builds(
    lambda d, tz: d.replace(tzinfo=tz), st.datetimes(dt.datetime(2, 1, 1), dt.datetime(9998, 12, 31)), offsets
)
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    decimals,
    st.text().filter(lambda s: s not in (PLACEHOLDER, PLACEHOLDER_B64)),
    st.dates(),
    st.datetimes(),
    aware,
    st.times(),
    st.times().map(lambda t: t.replace(tzinfo=UTC)),
    st.binary().filter(lambda b: b != PLACEHOLDER_BYTES),
    st.booleans(),
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.uuids(),
)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(lambda n: n != "id")
rows = st.dictionaries(names, values, max_size=8)
# an unconstrained numeric column, declared: VariableScaleDecimal in precise mode
vsd_values = st.one_of(decimals, st.none())


def make_event(row: dict, vsd: Decimal | None, key: int) -> ChangeEvent:
    after = {"id": key, **row, "vsd": vsd}
    return ChangeEvent(
        "u",
        "public",
        "t",
        None,
        after,
        100,
        200,
        100,  # seq: a streamed change's LSN
        1_700_000_000_000,
        7,
        db="pos",
        connector_name="c",
        key_columns=("id",),
        types={"id": (20, -1), "vsd": (1700, -1)},
    )


def same(a, b) -> bool:
    if type(a) is not type(b) or a != b:
        return False
    if type(a) is Decimal and not a.is_zero():
        return a.as_tuple() == b.as_tuple()
    if type(a) is Decimal:
        return a.as_tuple().exponent == b.as_tuple().exponent
    return True


def with_schema(v, mode: str):
    """What a value comes back as, schemas on."""
    if type(v) is dt.datetime and v.tzinfo is not None:
        return v.astimezone(UTC)
    if type(v) is dt.time and v.tzinfo is not None:
        return v.replace(tzinfo=UTC)  # generated in UTC
    if type(v) is Decimal and mode == "string":
        return format(v, "f")
    if type(v) is Decimal and mode == "double":
        return Decimal(repr(float(v)))
    if type(v) is Decimal and v.is_zero():
        return Decimal((0, (0,), v.as_tuple().exponent))
    return v


def without_schema(v, mode: str, column: str):
    """What a value comes back as, schemas off."""
    t = type(v)
    if t is Decimal:
        if column == "vsd" and mode == "precise":
            return with_schema(v, mode)
        if mode == "precise":
            return int_to_b64(int(EXACT.scaleb(v, -v.as_tuple().exponent)))
        return with_schema(v, mode)
    if t is dt.date:
        return (v - dt.date(1970, 1, 1)).days
    if t is dt.datetime and v.tzinfo is None:
        return (v - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    if t is dt.datetime:
        u = v.astimezone(UTC)
        return f"{u.isoformat(timespec='microseconds')[:-6]}Z"
    if t is dt.time and v.tzinfo is None:
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if t is dt.time:
        frac = f".{v.microsecond:06d}".rstrip("0") if v.microsecond else ""
        return f"{v:%H:%M:%S}{frac}Z"
    if t is bytes:
        return base64.b64encode(v).decode()
    if t is uuid.UUID:
        return str(v)
    return v


def check(row, vsd, key, schemas: bool, mode: str):
    ev = make_event(row, vsd, key)
    enc = EnvelopeEncoder("c", "pos", schemas=schemas, decimal_handling=mode, clock=lambda: 0)
    (rec,) = enc.records(ev)
    got = DEC.decode(rec.topic, rec.key, rec.value)
    assert (got.op, got.schema, got.table, got.key_columns) == ("u", "public", "t", ("id",))
    assert (got.commit_lsn, got.seq, got.lsn, got.txid, got.ts_ms) == (200, 100, 100, 7, 1_700_000_000_000)
    assert set(got.after) == set(ev.after)
    for column, v in ev.after.items():
        if v is None or v is UNCHANGED_TOAST:
            assert got.after[column] is v, column
            continue
        want = with_schema(v, mode) if schemas else without_schema(v, mode, column)
        assert same(got.after[column], want), (column, v, got.after[column], want)
    assert got.toast == any(v is UNCHANGED_TOAST for v in ev.after.values())


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(rows, vsd_values, st.integers(-(2**63), 2**63 - 1))
def test_schemas_precise(row, vsd, key):
    check(row, vsd, key, True, "precise")


@SETTINGS
@given(rows, vsd_values, st.integers(-(2**63), 2**63 - 1))
def test_schemas_string(row, vsd, key):
    check(row, vsd, key, True, "string")


@SETTINGS
@given(rows, vsd_values, st.integers(-(2**63), 2**63 - 1))
def test_schemas_double(row, vsd, key):
    check(row, vsd, key, True, "double")


@SETTINGS
@given(rows, vsd_values, st.integers(-(2**63), 2**63 - 1))
def test_schemaless_precise(row, vsd, key):
    check(row, vsd, key, False, "precise")


@SETTINGS
@given(rows, vsd_values, st.integers(-(2**63), 2**63 - 1))
def test_schemaless_string(row, vsd, key):
    check(row, vsd, key, False, "string")


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 2**40), st.integers(1, 1000)), min_size=1, max_size=30, unique=True))
def test_our_positions_sort_like_the_events(positions):
    """Whatever the commit LSNs and the changes' LSNs, decoded (commit_lsn, seq) orders our events as they
    were."""
    enc = EnvelopeEncoder("c", "pos", clock=lambda: 0)
    out = []
    for commit_lsn, seq in positions:
        ev = make_event({}, None, 1)
        ev.commit_lsn, ev.seq, ev.lsn = commit_lsn, seq, seq
        (rec,) = enc.records(ev)
        got = DEC.decode(rec.topic, rec.key, rec.value)
        out.append((got.commit_lsn, got.seq))
    assert out == positions
