"""The fast path (cdc/fast/) against the reference path, on random tables, stage configs, storefront column
types and messages (hypothesis): the storefront rows the fast path's COPY lines would write are the rows the
reference path would write (decode -> ChangeEvent -> stages -> KeyBuffer -> staging row), value for value in
the column's type, with the same key texts and positions; whatever the encoder leaves goes the reference way
in its place, and only for a reason the encoder documents (an old tuple, a TOASTed or binary value, a held
change, and for MariaDB a value whose literal it does not make: NaN, a numeric below 1E-6, an infinite or BC
time). For a MariaDB storefront each VALUES literal is the one the reference path sends (pymysql's, as
mysql_merge._mysql_escaper makes it), byte for byte, with and without NO_BACKSLASH_ESCAPES. Runs on whichever
cdc.fast.encode(_mysql) is imported: compiled, or pure Python with CDC_PURE_PYTHON=1."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from types import SimpleNamespace

import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_item

from cdc.config import ConnectorConfig
from cdc.errors import HoldError, TerminalError
from cdc.events import UNCHANGED_TOAST
from cdc.fast import FastPath, encode_mysql, why_not
from cdc.fast.encode import PASS
from cdc.fast.encode_mysql import DATETIME, NUMBER
from cdc.fast.plan import _how_mysql, plan_relation
from cdc.sinks.sql.bookkeeping import key_text
from cdc.sinks.sql.buffer import Encoded, KeyBuffer
from cdc.sinks.sql.mysql_merge import _mysql_escaper
from cdc.sinks.sql.target import Target
from cdc.sources.pg_stream import WalStream
from cdc.sources.pg_values import converter_for
from cdc.sources.pgoutput import Decoder
from cdc.stages import apply_stages, build_stages
from tests.unit.test_pgoutput import insert_msg, relation_msg, update_msg

OID = 16500
COMMIT_LSN, TS_MS, XID = 0x1234_5678, 1_717_000_000_123, 4242

# source types: (type oid, values as PostgreSQL's text)
TEXTS = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12),
    st.sampled_from(["it's", 'say "hi"', "back\\slash", "ctrl-z \x1a", "tab\tnl\ncr\r", "ünï ✓", "\\N", ""]),
)
INTS = st.integers(-(2**63), 2**63 - 1).map(str)
NUMERICS = st.one_of(
    st.decimals(min_value=-(10**20), max_value=10**20, allow_nan=False, allow_infinity=False).map(
        lambda d: format(d, "f")
    ),
    st.sampled_from(
        ["NaN", "0.0000001", "-0.00", "1E+3", "123456789012345678901234.5", "0.000001", "-0.0000010"]
        + ["0.0000000", "-0.00000012", "0.000000", "Infinity", "-Infinity"]
    ),
)


def _pg_time(d: dt.datetime) -> str:
    """A datetime as PostgreSQL's ISO output writes it (the fraction's trailing zeros left out, +00)."""
    text = d.isoformat(" ").replace("+00:00", "+00")
    if d.microsecond:
        head, rest = text.split(".")
        text = head + "." + rest[:6].rstrip("0") + rest[6:]
    return text


TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31), timezones=st.just(dt.UTC)
).map(_pg_time)
TYPES = {
    25: TEXTS,
    1043: TEXTS,
    20: INTS,
    23: st.integers(-(2**31), 2**31 - 1).map(str),
    1700: NUMERICS,
    1184: st.one_of(
        TIMES,
        st.sampled_from(
            ["infinity", "-infinity", "2024-05-06 07:08:09.5+05:30", "2024-05-06 07:08:09-08"]
            + ["2024-05-06 07:08:09.000+00"]  # (not PostgreSQL's form: a fraction of zeros)
        ),
    ),
    1114: st.one_of(TIMES.map(lambda t: t[:-3]), st.sampled_from(["infinity", "2024-01-02 03:04:05 BC"])),
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
    1114: sa.DateTime(),
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
    form = draw(st.sampled_from(["copy", "copy", "mysql", "mysql-nbe", "pg-values", "pg-values"]))
    money = {s["field"] for s in stages if s["type"] == "money"}
    target_types = [
        sa.Numeric()  # (pg-values: a money column's number goes bare into a numeric column only)
        if form == "pg-values" and out[i] in money and draw(st.integers(0, 5))
        else USUAL[types[i]]
        if draw(st.integers(0, 5))
        else draw(st.sampled_from(TARGET_TYPES))
        for i in kept
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
    lean, step = draw(st.booleans()) or form == "pg-values", draw(st.sampled_from([1, 2, 3, 256]))
    return types, names, stages, target_cols, target_types, rows, keys, shapes, lean, form, step


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

    def encoded_rows(self, cols, lean, expand, form=""):
        enc = Encoded(cols, expand, {} if lean else None, form=form)
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


def _literals(line: bytes, nbe: bool) -> list[str]:
    """A VALUES tuple, (<literal>,<literal>,...), split into its literals (quoted ones as they are)."""
    text = line.decode()
    assert text[0] == "(" and text[-1] == ")", text
    out, i, n = [], 1, len(text) - 1
    while i < n:
        j = i
        if text[i] == "'":
            j += 1
            while text[j] != "'" or (nbe and text[j + 1] == "'"):
                j += 2 if text[j] == "\\" and not nbe or text[j] == "'" else 1
            j += 1
        else:
            while j < n and text[j] != ",":
                j += 1
        assert j == n or text[j] == ",", text
        out.append(text[i:j])
        i = j + 1
    return out


def _unquoted(literal: str) -> str | None:
    """A PostgreSQL literal of a VALUES tuple (standard_conforming_strings on) -> the text it stands for."""
    if literal == "NULL":
        return None
    if literal[0] == "'":
        assert literal[-1] == "'" and "'" not in literal[1:-1].replace("''", ""), literal
        return literal[1:-1].replace("''", "'")
    return literal  # a money column's number, bare


def _escaper(nbe: bool):
    """The reference path's literals (mysql_merge._mysql_escaper on a pymysql connection's attributes)."""
    status = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES if nbe else 0
    return _mysql_escaper(SimpleNamespace(server_status=status, escape=lambda v: escape_item(v, "utf8mb4")))


def _mysql_leaves(plan, ev) -> bool:
    """Whether the MariaDB encoder leaves this change for its values: a numeric whose str() is not its text
    (NaN, Infinity, below 1E-6), a time the reference path keeps as text (infinity, BC)."""
    values = list(ev.after.values())
    for src, how, _ in plan.slots:
        v = values[src]
        if how == NUMBER and isinstance(v, Decimal) and (not v.is_finite() or "E" in str(v)):
            return True
        if how == DATETIME and isinstance(v, str):
            return True
    return False


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
    types, names, stage_cfgs, target_cols, target_types, rows, keys, shapes, lean, form, step = case
    mysql, nbe = form in ("mysql", "mysql-nbe"), form == "mysql-nbe"
    values = form == "pg-values"  # PostgreSQL's VALUES tuples (short runs): each literal PostgreSQL's text
    cfg = ConnectorConfig.model_validate(
        {
            "name": "prop",
            "source": {"type": "postgres", "dsn": "host=x", "tables": ["public.items"]},
            "transforms": stage_cfgs,
            "sink": {"type": "sql", "url": "sqlite:///x.db", "table": "t", "key": [target_cols[0]]},
        }
    )
    stages = build_stages(cfg.transforms)
    target = Target(cfg.sink, "prop", "mysql" if mysql else "postgresql")
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
        plan, _ = plan_relation(rel, stages, target, form)
    except TerminalError:
        return  # (a storefront column the rows cannot fill: the reference path stops the connector too)
    event(f"{form}: {'plan' if plan else 'no plan'}")
    if plan is None:
        return

    sink = Sink(target, lean)
    if values:  # the short runs' form: every run is short
        path = FastPath(stages, sink, min_run=10**6, step=step, short_form=form)
    else:
        path = FastPath(
            stages, sink, min_run=1, form=form, step=step
        )  # (a small step: calls split the batch)
    path.push(batch, lambda ev: sink.segments.append(("ref", ev)))
    esc = _escaper(nbe)

    # written in that order: each key's row as the storefront would have it (an unchanged TOASTed value keeps
    # what was there), in the form each path gives it (fast: COPY text; reference: Python values)
    state: dict[str, dict] = {}
    for how, item in sink.segments:
        if how == "enc":
            for k, line in item.lines.items():
                if mysql:  # a VALUES tuple, and the position as a cdc_applied entry
                    lits = _literals(line, nbe)
                    assert len(lits) == len(plan.cols), (line, plan.cols)
                    entry = json.loads(item.entries[k])
                    assert entry[0] == k.decode() and entry[5:] == ["u", None]
                    assert entry[1] == COMMIT_LSN and entry[3:5] == [TS_MS, XID]
                    state[k.decode()] = {c: ("lit", v) for c, v in zip(plan.cols, lits, strict=True)}
                    state[k.decode()]["__seq"] = entry[2]
                    continue
                if values:  # quoted: PostgreSQL's text, as COPY would carry it; bare: a money column's number
                    assert item.form == "pg-values"
                    lits = _literals(line, True)
                    assert len(lits) == len(plan.cols), (line, plan.cols)
                    entry = json.loads(item.entries[k])
                    assert entry[0] == k.decode() and entry[5:] == ["u", None]
                    assert entry[1] == COMMIT_LSN and entry[3:5] == [TS_MS, XID]
                    state[k.decode()] = {
                        c: ("text", _unquoted(v)) for c, v in zip(plan.cols, lits, strict=True)
                    }
                    state[k.decode()]["__seq"] = entry[2]
                    continue
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
            left_for = shapes[item.seq - 1000] in ("U-old", "U-toast") or (
                mysql and (not lean or _mysql_leaves(plan, item))
            )
            assert left_for, f"the encoder left {item.after}"
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
            elif how == "lit":  # the literal the reference path would send
                assert value == esc(want), (col, value, esc(want), want)
            else:
                assert _same(*kinds[col], value, want), (col, value, want)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(TYPES)).flatmap(lambda t: st.tuples(st.just(t), TYPES[t])), st.booleans())
def test_each_mariadb_literal_is_the_reference_literal(typed, nbe):
    """Each source type the MariaDB plan takes, alone: the encoder's literal is the one pymysql makes of the
    reference path's value (converter_for: the decoder's), or the change is left for a documented reason."""
    type_oid, text = typed
    how = _how_mysql(type_oid, "mysql-nbe" if nbe else "mysql")
    event(f"{type_oid}: {'no plan' if how is None else 'planned'}")
    if how is None:
        return
    lines, entries = {}, {}
    slots = ((0, PASS, ()), (1, how, ()))
    stop = encode_mysql.encode_run(
        [insert_msg(OID, ["7", text])], [1], 0, 2, slots, (0,), b'",1,', b',2,3,"u",null]', lines, entries
    )
    value = converter_for(type_oid)(text)
    if stop == 0:  # left: only a value whose literal is not made from its text
        assert (type_oid == 1700 and (not value.is_finite() or "E" in str(value))) or (
            type_oid in (1114, 1184) and isinstance(value, str)
        ), text
        event("left")
        return
    assert _literals(lines[b"7"], nbe) == ["7", _escaper(nbe)(value)]


def test_why_not_says_which_storefronts_take_the_fast_path(monkeypatch):
    monkeypatch.delenv("CDC_FAST_PATH", raising=False)

    def cfg(url: str, **sink):
        return ConnectorConfig.model_validate(
            {
                "name": "why",
                "source": {"type": "postgres", "dsn": "host=x", "tables": ["public.items"]},
                "sink": {"type": "sql", "url": url, "table": "t", "key": ["k"], **sink},
            }
        )

    assert why_not(cfg("postgresql+psycopg://h/db"), []) is None
    assert why_not(cfg("mysql+pymysql://h/db"), []) is None
    assert why_not(cfg("mariadb+pymysql://h/db"), []) is None
    assert why_not(cfg("postgresql+psycopg://h/db", position_group="g"), []) is None  # (checked lines)
    assert "position_group" in why_not(cfg("mysql+pymysql://h/db", position_group="g"), [])
    assert why_not(cfg("sqlite:///x.db"), []) == "the storefront is not PostgreSQL or MariaDB/MySQL"
