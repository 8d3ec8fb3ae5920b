"""The fast path (cdc/fast/) against the reference path, on random tables, stage configs, storefront column
types and messages (hypothesis): the storefront rows the fast path's COPY lines would write are the rows the
reference path would write (decode -> ChangeEvent -> stages -> KeyBuffer -> staging row), value for value in
the column's type, with the same key texts and positions; whatever the encoder leaves goes the reference way
in its place, and only for a reason the encoder documents (an old tuple, a TOASTed or binary value, a held
change). Runs on whichever cdc.fast.encode is imported: compiled, or pure Python with CDC_PURE_PYTHON=1."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError
from cdc.events import UNCHANGED_TOAST
from cdc.fast import FastPath
from cdc.fast.plan import plan_relation
from cdc.sinks.sql.bookkeeping import key_text
from cdc.sinks.sql.buffer import Encoded, KeyBuffer
from cdc.sinks.sql.target import Target
from cdc.sources.pg_stream import WalStream
from cdc.sources.pg_values import converter_for
from cdc.sources.pgoutput import Decoder
from cdc.stages import apply_stages, build_stages
from tests.unit.test_pgoutput import insert_msg, relation_msg, update_msg

OID = 16500
COMMIT_LSN, TS_MS, XID = 0x1234_5678, 1_717_000_000_123, 4242

# source types: (type oid, values as PostgreSQL's text)
TEXTS = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)
INTS = st.integers(-(2**63), 2**63 - 1).map(str)
NUMERICS = st.one_of(
    st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, allow_infinity=False).map(
        lambda d: format(d, "f")
    ),
    st.sampled_from(["NaN", "0.0000001", "-0.00", "1E+3", "123456789012345678901234.5"]),
)
TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31), timezones=st.just(dt.UTC)
).map(lambda d: d.isoformat(" ").replace("+00:00", "+00"))
TYPES = {
    25: TEXTS,
    1043: TEXTS,
    20: INTS,
    23: st.integers(-(2**31), 2**31 - 1).map(str),
    1700: NUMERICS,
    1184: st.one_of(TIMES, st.sampled_from(["infinity", "-infinity"])),
    1082: st.dates().map(str),
    16: st.sampled_from(["t", "f"]),
    2950: st.uuids().map(str),
    3802: st.sampled_from(['{"a": 1}', '{"b": "x\\ty"}', "[]"]),
    701: st.floats(allow_nan=False).map(repr),
}
TARGET_TYPES = [sa.Text(), sa.Numeric(), sa.BigInteger(), sa.DateTime(True), sa.Date(), sa.Boolean()]
# the storefront type a column of each source type usually has (else one drawn from TARGET_TYPES)
USUAL = {
    25: sa.Text(),
    1043: sa.Text(),
    20: sa.BigInteger(),
    23: sa.BigInteger(),
    1700: sa.Numeric(),
    1184: sa.DateTime(True),
    1082: sa.Date(),
    16: sa.Boolean(),
    2950: sa.Text(),
    3802: sa.Text(),
    701: sa.Text(),
}
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):
    n = draw(st.integers(2, 6))
    types = [draw(st.sampled_from([25, 1043, 20, 23]))] + [
        draw(st.sampled_from(sorted(TYPES))) for _ in range(n - 1)
    ]
    names = [f"c{i}" for i in range(n)]
    stages = []
    renames = {c: f"r{c}" for c in names if draw(st.booleans())}
    if names[0] not in renames and draw(st.integers(0, 5)) == 0:  # a collision now and then: no plan
        renames[names[-1]] = names[0]
    if renames:
        stages.append({"type": "rename", "fields": renames})
    out = [renames.get(c, c) for c in names]
    money_cols = [i for i, t in enumerate(types) if t in (20, 23, 1700) and i > 0]
    for i in draw(st.lists(st.sampled_from(money_cols), max_size=2)) if money_cols else []:
        stages.append(
            {
                "type": "money",
                "field": out[i],
                "divide_by": draw(st.sampled_from([None, 1, 10, 100, 1000, 3, 7, "0.5"])),
                "scale": draw(st.integers(0, 4)),
                "rounding": draw(st.sampled_from(["half_up", "half_even", "down", "up"])),
            }
        )
    if n > 2 and draw(st.booleans()):
        stages.append({"type": "drop", "fields": [out[-1]]})
    kept = [0] + [i for i in range(1, n) if out[i] != out[0] and draw(st.integers(0, 4))]
    target_cols = [out[i] for i in kept]
    target_types = [
        USUAL[types[i]] if draw(st.integers(0, 5)) else draw(st.sampled_from(TARGET_TYPES)) for i in kept
    ]
    rows = draw(
        st.lists(st.tuples(*[st.one_of(st.none(), TYPES[t]) for t in types]), min_size=1, max_size=12)
    )
    keys = draw(st.lists(st.sampled_from([r[0] for r in rows]), max_size=4))  # keys changed again
    shapes = draw(
        st.lists(
            st.sampled_from(["I", "U", "U-old", "U-toast"]),
            min_size=len(rows) + len(keys),
            max_size=len(rows) + len(keys),
        )
    )
    return types, names, stages, target_cols, target_types, rows, keys, shapes, draw(st.booleans())


def _messages(types, rows, keys, shapes):
    msgs = []
    for values, shape in zip(
        [*rows, *[next(r for r in rows if r[0] == k) for k in keys]], shapes, strict=False
    ):
        values = list(values)
        if shape == "I":
            msgs.append(insert_msg(OID, values))
        elif shape == "U":
            msgs.append(update_msg(OID, values))
        elif shape == "U-old":
            msgs.append(update_msg(OID, values, [values[0]] + [None] * (len(values) - 1), b"K"))
        else:
            msgs.append(update_msg(OID, [values[0], UNCHANGED_TOAST, *values[2:]]))
    return msgs


class Sink:
    """The sink side of FastPath.push in memory: encoded groups and reference changes, in the order given."""

    def __init__(self, target, lean: bool):
        self.target, self.key_cols, self.segments, self.lean = target, target.key_cols, [], lean

    def lean_above(self):
        return 0 if self.lean else None

    def encoded_rows(self, cols, lean, expand):
        enc = Encoded(cols, expand, {} if lean else None)
        self.segments.append(("enc", enc))
        return enc


def _text(value) -> str | None:
    """A reference value as the COPY text psycopg would send (None: NULL)."""
    if value is None:
        return None
    if value is True or value is False:
        return "t" if value else "f"
    return str(value)


def _unescape(field: bytes) -> str | None:
    if field == b"\\N":
        return None
    out, i, text = [], 0, field.decode()
    while i < len(text):
        if text[i] == "\\":
            out.append(
                {"b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r", "\\": "\\"}[text[i + 1]]
            )
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _same(type_oid: int, money: bool, fast: str | None, ref) -> bool:
    if fast is None or ref is None:
        return fast is None and ref is None
    if money or isinstance(ref, str | bool | int) or type_oid in (2950, 3802):
        return fast == _text(ref)
    if isinstance(ref, Decimal):
        return Decimal(fast).as_tuple() == ref.as_tuple()
    return converter_for(type_oid)(fast) == ref  # dates and times: the same instant, written in another form


@SETTINGS
@given(cases())
def test_fast_path_rows_are_the_reference_rows(case):
    types, names, stage_cfgs, target_cols, target_types, rows, keys, shapes, lean = case
    cfg = ConnectorConfig.model_validate(
        {
            "name": "prop",
            "source": {"type": "postgres", "dsn": "host=x", "tables": ["public.items"]},
            "transforms": stage_cfgs,
            "sink": {"type": "sql", "url": "sqlite:///x.db", "table": "t", "key": [target_cols[0]]},
        }
    )
    stages = build_stages(cfg.transforms)
    target = Target(cfg.sink, "prop", "postgresql")
    target.table = sa.Table(
        "t",
        sa.MetaData(),
        *[
            sa.Column(c, t, primary_key=i == 0)
            for i, (c, t) in enumerate(zip(target_cols, target_types, strict=True))
        ],
    )
    dec = Decoder()
    rel = dec.decode(
        relation_msg(
            OID,
            "public",
            "items",
            "d",
            [(int(i == 0), c, t, -1) for i, (c, t) in enumerate(zip(names, types, strict=True))],
        )
    )
    stream = WalStream(cfg, "pos")
    msgs = _messages(types, rows, keys, shapes)
    batch = stream._batch(rel, msgs, [1000 + i for i in range(len(msgs))], 0, COMMIT_LSN, TS_MS, XID)

    # the reference path: every change through the stages into a KeyBuffer
    def reference(events):
        buffer, held = KeyBuffer(target.key_cols), []
        for ev in events:
            try:
                out = apply_stages(stages, ev)
                if out is not None:
                    buffer.add(out)
            except HoldError as e:
                held.append((ev.seq, e.rule))
        return buffer, held

    ref_buffer, ref_held = reference(batch.events())
    try:
        plan, _ = plan_relation(rel, stages, target)
    except TerminalError:
        return  # (a storefront column the rows cannot fill: the reference path stops the connector too)
    event("plan" if plan else "no plan")
    if plan is None:
        return

    sink = Sink(target, lean)
    FastPath(stages, sink, min_run=1).push(batch, lambda ev: sink.segments.append(("ref", ev)))

    # written in that order: each key's row as the storefront would have it (an unchanged TOASTed value keeps
    # what was there), in the form each path gives it (fast: COPY text; reference: Python values)
    state: dict[str, dict] = {}
    for how, item in sink.segments:
        if how == "enc":
            for k, line in item.lines.items():
                fields = line.rstrip(b"\n").split(b"\t")
                row = {c: ("text", _unescape(f)) for c, f in zip(plan.cols, fields, strict=False)}
                if item.entries is None:  # the position on the line
                    assert len(fields) == len(plan.cols) + 7
                    assert _unescape(fields[len(plan.cols)]) == k.decode()
                    tail = [int(f) for f in fields[len(plan.cols) + 2 : len(plan.cols) + 6]]
                    assert fields[len(plan.cols) + 1 :: 5] == [b"u", b"\\N"]
                else:  # lean: the storefront columns, and the position as a cdc_applied entry
                    assert len(fields) == len(plan.cols)
                    entry = json.loads(item.entries[k])
                    assert entry[0] == k.decode() and entry[5:] == ["u", None]
                    tail = entry[1:5]
                assert tail[0] == COMMIT_LSN and tail[2:] == [TS_MS, XID]
                state[k.decode()] = {**row, "__seq": tail[1]}
            continue
        buf, held = reference([item])
        if not held:  # left for a documented reason only
            assert shapes[item.seq - 1000] in ("U-old", "U-toast"), f"the encoder left {item.after}"
        for key, p in buf.pending.items():
            kt, old = key_text(key), state.get(key_text(key), {})
            state[kt] = {
                c: (old.get(c, ("val", v)) if v is UNCHANGED_TOAST else ("val", v)) for c, v in p.row.items()
            }
            state[kt]["__seq"] = p.ev.seq
    event(f"encoded {sum(len(i.lines) for h, i in sink.segments if h == 'enc') > 0}")
    expected = {key_text(k): p for k, p in ref_buffer.pending.items()}
    assert set(state) == set(expected)
    kinds = {c: (types[src], bool(convs)) for c, (src, _, convs) in zip(plan.cols, plan.slots, strict=False)}
    for kt, got in state.items():
        p = expected[kt]
        assert got.pop("__seq") == p.ev.seq
        for col in plan.cols:
            want = p.row.get(col)
            how, value = got.get(col, ("val", None))
            if how == "val":
                assert value == want or (value != value and want != want), (col, value, want)  # (NaN)
            else:
                assert _same(*kinds[col], value, want), (col, value, want)
