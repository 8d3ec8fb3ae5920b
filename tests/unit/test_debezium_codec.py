"""The Debezium-format codec: EnvelopeEncoder (cdc.sinks.envelope) and EnvelopeDecoder (cdc.sources.debezium).

Hand-written messages follow Debezium 3.6's documented shapes (postgresql.adoc) and its code (SourceInfo,
SpecialValueDecimal, VariableScaleDecimal, UnchangedToastedPlaceholder); output is compared as parsed JSON with
expected dicts. The property tests round-trip random rows through both converter shapes and decimal modes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest

from cdc.connect_schema import PLACEHOLDER, PLACEHOLDER_B64, int_to_b64
from cdc.events import UNCHANGED_TOAST, ChangeEvent
from cdc.sinks.envelope import EncodeError, EnvelopeEncoder, source_schema
from cdc.sources.debezium import DecodeError, EnvelopeDecoder

NOW_NS = 1_700_000_001_234_567_891
TYPES = {"item_code": (1043, -1), "price_fen": (20, -1), "price": (1700, (10 << 16 | 2) + 4)}


def event(op="u", before=None, after=None, **kw) -> ChangeEvent:
    base = dict(
        op=op,
        schema="public",
        table="item_price",
        before=before,
        after=after,
        lsn=0x16B3748,
        commit_lsn=0x16B3800,
        seq=0x16B3748,  # a streamed change's seq is its LSN, as the PostgreSQL source makes it
        ts_ms=1_700_000_000_123,
        txid=771,
        db="pos",
        connector_name="pos-prices",
        key_columns=("item_code",),
        types=TYPES,
    )
    if "lsn" in kw and "seq" not in kw:
        kw["seq"] = kw["lsn"]
    base.update(kw)
    return ChangeEvent(**base)


def encoder(**kw) -> EnvelopeEncoder:
    return EnvelopeEncoder("pos-prices", "pos", clock=lambda: NOW_NS, **kw)


def payload(record_value: bytes) -> dict:
    doc = json.loads(record_value)
    return doc["payload"] if set(doc) == {"schema", "payload"} else doc


DEC = EnvelopeDecoder()


# --------------------------------------------------------------------------------------------------------
# encoder
# --------------------------------------------------------------------------------------------------------


def test_update_with_schema_is_debeziums_envelope():
    ev = event(before=None, after={"item_code": "A1", "price_fen": 120, "price": Decimal("1.20")})
    (rec,) = encoder().records(ev)
    assert rec.topic == "pos.public.item_price"
    assert json.loads(rec.key) == {
        "schema": {
            "type": "struct",
            "fields": [{"type": "string", "optional": False, "field": "item_code"}],
            "optional": False,
            "name": "pos.public.item_price.Key",
        },
        "payload": {"item_code": "A1"},
    }
    doc = json.loads(rec.value)
    row_fields = [
        {"type": "string", "optional": True, "field": "item_code"},
        {"type": "int64", "optional": True, "field": "price_fen"},
        {
            "type": "bytes",
            "optional": True,
            "name": "org.apache.kafka.connect.data.Decimal",
            "version": 1,
            "parameters": {"scale": "2", "connect.decimal.precision": "10"},
            "field": "price",
        },
    ]
    row = {"type": "struct", "fields": row_fields, "optional": True, "name": "pos.public.item_price.Value"}
    assert doc["schema"]["name"] == "pos.public.item_price.Envelope"
    assert doc["schema"]["version"] == 2
    assert [f["field"] for f in doc["schema"]["fields"]] == [
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    ]
    assert doc["schema"]["fields"][0] == {**row, "field": "before"}
    assert doc["schema"]["fields"][1] == {**row, "field": "after"}
    assert doc["schema"]["fields"][2] == {**source_schema(), "field": "source"}
    assert doc["payload"] == {
        "before": None,
        "after": {"item_code": "A1", "price_fen": 120, "price": base64.b64encode(b"\x78").decode()},
        "source": {
            "version": "0.1.0+pos-cdc",
            "connector": "postgresql",
            "name": "pos-prices",
            "ts_ms": 1_700_000_000_123,
            "snapshot": "false",
            "db": "pos",
            "sequence": f'["{0x16B3800}","{0x16B3748}"]',
            "ts_us": 1_700_000_000_123_000,
            "ts_ns": 1_700_000_000_123_000_000,
            "schema": "public",
            "table": "item_price",
            "txId": 771,
            "lsn": 0x16B3748,
            "xmin": None,
            "origin": None,
            "origin_lsn": None,
        },
        "transaction": {"id": f"771:{0x16B3800}", "total_order": 1, "data_collection_order": 1},
        "op": "u",
        "ts_ms": NOW_NS // 1_000_000,
        "ts_us": NOW_NS // 1000,
        "ts_ns": NOW_NS,
    }


def test_schemaless_is_the_bare_payload_and_output_is_deterministic():
    ev = event(after={"item_code": "A1", "price_fen": 120})
    a, b = encoder(schemas=False).records(ev), encoder(schemas=False).records(ev)
    assert a == b
    assert json.loads(a[0].key) == {"item_code": "A1"}
    assert set(json.loads(a[0].value)) == {
        "before",
        "after",
        "source",
        "transaction",
        "op",
        "ts_ms",
        "ts_us",
        "ts_ns",
    }


@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("precise", Decimal("-1.20"), int_to_b64(-120)),
        ("string", Decimal("-1.20"), "-1.20"),
        ("string", Decimal("NaN"), "NAN"),
        ("string", Decimal("Infinity"), "POSITIVE_INFINITY"),
        ("double", Decimal("-1.20"), -1.2),
        ("double", Decimal("-Infinity"), "-Infinity"),
    ],
)
def test_decimal_modes(mode, value, expected):
    (rec,) = encoder(decimal_handling=mode, schemas=False).records(
        event(after={"item_code": "A", "price": value})
    )
    assert payload(rec.value)["after"]["price"] == expected


def test_precise_refuses_nan_with_a_reason():
    with pytest.raises(EncodeError, match="NaN cannot be written in decimal_handling=precise") as err:
        encoder().records(event(after={"item_code": "A", "price": Decimal("NaN")}))
    assert err.value.rule == "kafka.encode"


def test_a_renamed_converted_column_gets_the_schema_of_its_value():
    """price_fen (int8) renamed to price and turned into a Decimal by a stage: not the int8 schema."""
    ev = event(
        after={"item_code": "A", "cost": Decimal("12.345")}, types={"item_code": (1043, -1), "cost": (20, -1)}
    )
    doc = json.loads(encoder().records(ev)[0].value)
    cost = doc["schema"]["fields"][1]["fields"][1]
    assert cost == {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": "3"},
        "field": "cost",
    }
    assert doc["payload"]["after"]["cost"] == int_to_b64(12345)


def test_big_endian_twos_complement_like_java_biginteger():
    assert [base64.b64decode(int_to_b64(n)) for n in (0, 127, 128, -128, -129, 255)] == [
        b"\x00",
        b"\x7f",
        b"\x00\x80",
        b"\x80",
        b"\xff\x7f",
        b"\x00\xff",
    ]


def test_time_types_as_debezium_adaptive():
    types = {"item_code": (25, -1), "d": (1082, -1), "t3": (1083, 3), "t": (1083, -1), "ts3": (1114, 3)}
    types |= {"ts": (1114, -1), "tz": (1184, -1), "tz0": (1184, 0), "ttz": (1266, -1), "u": (2950, -1)}
    after = {
        "item_code": "A",
        "d": dt.date(1969, 12, 31),
        "t3": dt.time(0, 0, 1, 5000),
        "t": dt.time(0, 0, 1, 5),
        "ts3": dt.datetime(1970, 1, 1, 0, 0, 1, 5000),
        "ts": dt.datetime(1970, 1, 1, 0, 0, 1, 5),
        "tz": dt.datetime(2024, 1, 1, 8, 0, 0, 500000, tzinfo=dt.timezone(dt.timedelta(hours=8))),
        "tz0": dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC),
        "ttz": dt.time(10, 15, 30, 500000, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "u": uuid.UUID(int=1),
    }
    doc = json.loads(encoder().records(event(after=after, types=types))[0].value)
    names = {f["field"]: f.get("name") for f in doc["schema"]["fields"][1]["fields"]}
    assert names == {
        "item_code": None,
        "d": "io.debezium.time.Date",
        "t3": "io.debezium.time.Time",
        "t": "io.debezium.time.MicroTime",
        "ts3": "io.debezium.time.Timestamp",
        "ts": "io.debezium.time.MicroTimestamp",
        "tz": "io.debezium.time.ZonedTimestamp",
        "tz0": "io.debezium.time.ZonedTimestamp",
        "ttz": "io.debezium.time.ZonedTime",
        "u": "io.debezium.data.Uuid",
    }
    assert doc["payload"]["after"] == {
        "item_code": "A",
        "d": -1,
        "t3": 1005,
        "t": 1_000_005,
        "ts3": 1005,
        "ts": 1_000_005,
        "tz": "2024-01-01T00:00:00.500000Z",
        "tz0": "2024-01-01T00:00:00Z",
        "ttz": "09:15:30.5Z",
        "u": "00000000-0000-0000-0000-000000000001",
    }


def test_unchanged_toast_is_the_placeholder_in_the_columns_representation():
    types = {"item_code": (25, -1), "note": (25, -1), "img": (17, -1)}
    ev = event(after={"item_code": "A", "note": UNCHANGED_TOAST, "img": UNCHANGED_TOAST}, types=types)
    after = payload(encoder().records(ev)[0].value)["after"]
    assert after == {"item_code": "A", "note": PLACEHOLDER, "img": PLACEHOLDER_B64}
    assert base64.b64decode(PLACEHOLDER_B64) == b"__debezium_unavailable_value"


def test_delete_is_followed_by_a_tombstone_unless_told_not_to():
    ev = event(op="d", before={"item_code": "A1"}, after=None)
    recs = encoder().records(ev)
    assert [(r.topic, r.value is None) for r in recs] == [("pos.public.item_price", False)] * 1 + [
        ("pos.public.item_price", True)
    ]
    assert recs[0].key == recs[1].key
    assert len(encoder(tombstones=False).records(ev)) == 1


def test_key_change_is_delete_tombstone_create():
    ev = event(before={"item_code": "OLD", "price_fen": 1}, after={"item_code": "NEW", "price_fen": 1})
    recs = encoder(schemas=False).records(ev)
    assert [(json.loads(r.key), r.value and payload(r.value)["op"]) for r in recs] == [
        ({"item_code": "OLD"}, "d"),
        ({"item_code": "OLD"}, None),
        ({"item_code": "NEW"}, "c"),
    ]


def test_truncate_has_no_key_and_no_rows():
    (rec,) = encoder().records(event(op="t", before=None, after=None))
    assert rec.topic == "pos.public.item_price" and rec.key is None
    p = payload(rec.value)
    assert (p["op"], p["before"], p["after"]) == ("t", None, None)


# --------------------------------------------------------------------------------------------------------
# decoder: Debezium's own messages
# --------------------------------------------------------------------------------------------------------


def dbz_source(**kw) -> dict:
    src = {
        "version": "3.6.1.Final",
        "connector": "postgresql",
        "name": "dbz",
        "ts_ms": 1_700_000_000_000,
        "snapshot": "false",
        "db": "pos",
        "sequence": '["24023119","24023128"]',
        "ts_us": 1_700_000_000_000_000,
        "ts_ns": 1_700_000_000_000_000_000,
        "schema": "public",
        "table": "item_price",
        "txId": 556,
        "lsn": 24023128,
        "xmin": None,
    }
    src.update(kw)
    return src


def dbz_value(op, before, after, fields=None, **src) -> bytes:
    p = {"before": before, "after": after, "source": dbz_source(**src), "transaction": None, "op": op}
    p |= {"ts_ms": 1_700_000_000_500, "ts_us": 1_700_000_000_500_000, "ts_ns": 1_700_000_000_500_000_000}
    if fields is None:
        return json.dumps(p).encode()
    row = {"type": "struct", "fields": fields, "optional": True, "name": "dbz.public.item_price.Value"}
    schema = {
        "type": "struct",
        "fields": [
            {**row, "field": "before"},
            {**row, "field": "after"},
            {**source_schema(), "field": "source"},
        ],
        "optional": False,
        "name": "dbz.public.item_price.Envelope",
        "version": 2,
    }
    return json.dumps({"schema": schema, "payload": p}).encode()


KEY_WITH_SCHEMA = json.dumps(
    {
        "schema": {
            "type": "struct",
            "fields": [{"type": "int32", "optional": False, "field": "id"}],
            "optional": False,
            "name": "dbz.public.item_price.Key",
        },
        "payload": {"id": 1},
    }
).encode()
ID = {"type": "int32", "optional": False, "field": "id"}


def dec_field(name, scale, precision=10):
    return {
        "type": "bytes",
        "optional": True,
        "name": "org.apache.kafka.connect.data.Decimal",
        "version": 1,
        "parameters": {"scale": str(scale), "connect.decimal.precision": str(precision)},
        "field": name,
    }


VSD = {
    "type": "struct",
    "fields": [
        {"type": "int32", "optional": False, "field": "scale"},
        {"type": "bytes", "optional": False, "field": "value"},
    ],
    "optional": True,
    "name": "io.debezium.data.VariableScaleDecimal",
    "version": 1,
    "doc": "Variable scaled decimal",
}


def test_precise_decimal_bytes_and_variable_scale():
    fields = [ID, dec_field("price", 2), {**VSD, "field": "weight"}]
    after = {"id": 1, "price": int_to_b64(-1999), "weight": {"scale": 3, "value": int_to_b64(1500)}}
    ev = DEC.decode("dbz.public.item_price", KEY_WITH_SCHEMA, dbz_value("c", None, after, fields))
    assert ev.after == {"id": 1, "price": Decimal("-19.99"), "weight": Decimal("1.500")}
    assert str(ev.after["price"]) == "-19.99"
    assert (ev.op, ev.schema, ev.table, ev.db, ev.txid, ev.connector_name) == (
        "c",
        "public",
        "item_price",
        "pos",
        556,
        "dbz",
    )
    assert ev.key_columns == ("id",) and ev.toast is False and ev.snapshot == "false"


def test_numeric_json_decimal_format():
    """JsonConverter decimal.format=NUMERIC writes a Decimal as a JSON number: read exactly, at the schema's scale."""
    v = (
        b'{"schema":'
        + json.dumps(
            {
                "type": "struct",
                "fields": [
                    {
                        "type": "struct",
                        "fields": [ID, dec_field("price", 2)],
                        "optional": True,
                        "name": "x.Value",
                        "field": "after",
                    }
                ],
                "optional": False,
            }
        ).encode()
    )
    v += (
        b',"payload":'
        + json.dumps(
            {"before": None, "after": {"id": 1, "price": 0}, "source": dbz_source(), "op": "c"}
        ).encode()[:-1]
    )
    v += b',"extra":null}}'
    ev = DEC.decode("t", KEY_WITH_SCHEMA, v.replace(b'"price": 0', b'"price": 12.5'))
    assert ev.after["price"] == Decimal("12.50") and str(ev.after["price"]) == "12.50"


def test_string_mode_keeps_strings_and_double_mode_reads_exact_decimals():
    fields = [
        ID,
        {"type": "string", "optional": True, "field": "price"},
        {"type": "double", "optional": True, "field": "w"},
    ]
    fields[2]["type"] = "double"
    raw = dbz_value("c", None, {"id": 1, "price": "19.90", "w": 0}, fields).replace(
        b'"w": 0', b'"w": 0.1000000000000000055511151231257827'
    )
    ev = DEC.decode("t", KEY_WITH_SCHEMA, raw)
    assert ev.after == {"id": 1, "price": "19.90", "w": Decimal("0.1000000000000000055511151231257827")}
    nan = DEC.decode(
        "t", KEY_WITH_SCHEMA, dbz_value("c", None, {"id": 1, "price": "NAN", "w": "NaN"}, fields)
    )
    assert nan.after["price"] == "NAN" and nan.after["w"].is_nan()
    schemaless = DEC.decode(
        "t",
        b'{"id":1}',
        b'{"before":null,"after":{"id":1,"p":19.90,"n":7},"source":'
        + json.dumps(dbz_source()).encode()
        + b',"op":"c"}',
    )
    assert schemaless.after == {"id": 1, "p": Decimal("19.90"), "n": 7} and type(schemaless.after["n"]) is int
    assert str(schemaless.after["p"]) == "19.90"


def test_placeholder_becomes_unchanged_toast():
    fields = [
        ID,
        {"type": "string", "optional": True, "field": "note"},
        {"type": "bytes", "optional": True, "field": "img"},
    ]
    after = {"id": 1, "note": PLACEHOLDER, "img": PLACEHOLDER_B64}
    ev = DEC.decode("t", KEY_WITH_SCHEMA, dbz_value("u", None, after, fields))
    assert ev.after == {"id": 1, "note": UNCHANGED_TOAST, "img": UNCHANGED_TOAST} and ev.toast is True
    arrays = DEC.decode(
        "t",
        b'{"id":1}',
        dbz_value("u", None, {"id": 1, "tags": [PLACEHOLDER], "n": list(b"__debezium_unavailable_value")}),
    )
    assert arrays.after == {"id": 1, "tags": UNCHANGED_TOAST, "n": UNCHANGED_TOAST}


def test_times_back_to_python():
    fields = [
        ID,
        {"type": "int32", "optional": True, "name": "io.debezium.time.Date", "version": 1, "field": "d"},
        {
            "type": "int64",
            "optional": True,
            "name": "io.debezium.time.MicroTimestamp",
            "version": 1,
            "field": "ts",
        },
        {
            "type": "int64",
            "optional": True,
            "name": "io.debezium.time.Timestamp",
            "version": 1,
            "field": "ts3",
        },
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.time.ZonedTimestamp",
            "version": 1,
            "field": "tz",
        },
        {"type": "int64", "optional": True, "name": "io.debezium.time.MicroTime", "version": 1, "field": "t"},
        {
            "type": "string",
            "optional": True,
            "name": "io.debezium.time.ZonedTime",
            "version": 1,
            "field": "ttz",
        },
        {"type": "string", "optional": True, "name": "io.debezium.data.Uuid", "version": 1, "field": "u"},
    ]
    after = {
        "id": 1,
        "d": 19724,
        "ts": 1_704_164_645_000_007,
        "ts3": 1005,
        "tz": "2024-01-02T03:04:05.600000Z",
    }
    after |= {"t": 3_723_000_004, "ttz": "09:15:30.5Z", "u": "00000000-0000-0000-0000-000000000001"}
    ev = DEC.decode("t", KEY_WITH_SCHEMA, dbz_value("c", None, after, fields))
    assert ev.after == {
        "id": 1,
        "d": dt.date(2024, 1, 2),
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 7),
        "ts3": dt.datetime(1970, 1, 1, 0, 0, 1, 5000),
        "tz": dt.datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC),
        "t": dt.time(1, 2, 3, 4),
        "ttz": dt.time(9, 15, 30, 500000, tzinfo=dt.UTC),
        "u": uuid.UUID(int=1),
    }
    assert ev.after["tz"].tzinfo is not None and ev.after["ts"].tzinfo is None


def test_deletes_replica_identity_default_and_full():
    key = b'{"id":1}'
    default = DEC.decode("t", key, dbz_value("d", {"id": 1, "name": "", "price": None}, None))
    assert (default.op, default.before, default.after, default.row) == (
        "d",
        {"id": 1, "name": "", "price": None},
        None,
        default.before,
    )
    full = DEC.decode("t", key, dbz_value("d", {"id": 1, "name": "Tea", "price": "1.5"}, None))
    assert full.before == {"id": 1, "name": "Tea", "price": "1.5"}


def test_skipped_records():
    assert DEC.decode("dbz.public.item_price", b'{"id":1}', None) is None  # tombstone
    assert DEC.decode("__debezium-heartbeat.dbz", b'{"serverName":"dbz"}', b'{"ts_ms":1700000000000}') is None
    tx = {"status": "END", "id": "571:53195832", "ts_ms": 1, "event_count": 2, "data_collections": []}
    assert DEC.decode("dbz.transaction", b'{"id":"571:53195832"}', json.dumps(tx).encode()) is None
    assert DEC.decode("t", None, b'{"schema":{"type":"struct"},"payload":null}') is None


def test_truncate():
    ev = DEC.decode("dbz.public.item_price", None, dbz_value("t", None, None))
    assert (ev.op, ev.before, ev.after, ev.key_columns, ev.table) == ("t", None, None, (), "item_price")


@pytest.mark.parametrize(
    "key, value, reason",
    [
        (b'{"id":1}', b"{not json", "value is not JSON"),
        (b'{"id":1}', b"[1,2]", "not a change event: the value is a JSON list"),
        (b'{"id":1}', b'{"after":{"id":1}}', "no 'op' field"),
        (b'{"id":1}', dbz_value("x", None, {"id": 1}), "unknown op 'x'"),
        (None, dbz_value("c", None, {"id": 1}), "no key"),
        (b"nope", dbz_value("c", None, {"id": 1}), "key is not JSON"),
        (b'{"id":1}', b'{"op":"c","after":{"id":1}}', "without a 'source' object"),
        (b'{"id":1}', dbz_value("c", None, None), "'after' must be an object, got null"),
        (b'{"id":1}', dbz_value("d", None, None), "'before' must be an object"),
        (b'{"id":1}', dbz_value("c", None, {"id": 1}, sequence="[1]"), "source.sequence is not a JSON array"),
        (KEY_WITH_SCHEMA, dbz_value("c", None, {"id": "one"}, [ID]), "after.id: expected an integer (int32)"),
        (KEY_WITH_SCHEMA, dbz_value("c", None, {"id": 1, "p": 5}, [ID, dec_field("p", 2)]), None),
        (
            KEY_WITH_SCHEMA,
            dbz_value("c", None, {"id": 1, "p": "%%"}, [ID, dec_field("p", 2)]),
            "after.p: not base64",
        ),
        (
            KEY_WITH_SCHEMA,
            dbz_value("c", None, {"id": 1, "zz": 1}, [ID]),
            "after.zz is not in the value schema",
        ),
    ],
)
def test_malformed_input_raises_decode_error_with_a_reason(key, value, reason):
    if reason is None:  # a JSON number in a Decimal field is decimal.format=NUMERIC, not an error
        assert DEC.decode("t", key, value).after["p"] == Decimal("5.00")
        return
    with pytest.raises(DecodeError) as err:
        DEC.decode("dbz.public.item_price", key, value)
    assert reason in err.value.reason and err.value.rule == "kafka.decode"


# --------------------------------------------------------------------------------------------------------
# the ordering key
# --------------------------------------------------------------------------------------------------------


def position(op, snapshot, sequence, lsn, version="3.6.1.Final"):
    raw = dbz_value(op, None, {"id": 1}, snapshot=snapshot, sequence=sequence, lsn=lsn, version=version)
    ev = DEC.decode("t", b'{"id":1}', raw)
    return ev.commit_lsn, ev.seq


def test_debezium_positions_follow_commit_order_across_the_snapshot_boundary():
    """Fresh connector: snapshot at X=1000 ([null, X]); T1 was open at the snapshot point (a change at 900 < X)
    and commits first ([null, 900]); T2 follows T1 whose commit record ends at 1100 ([1100, 950]: T2's change
    was written before T1's commit); then T3 ([1300, 1200])."""
    snap = position("r", "true", '[null,"1000"]', 1000)
    last = position("r", "last", '[null,"1000"]', 1000)
    t1 = position("u", "false", '[null,"900"]', 900)
    t2 = position("u", "false", '["1100","950"]', 950)
    t3 = position("u", "false", '["1300","1200"]', 1200)
    assert snap == last < t1 < t2 < t3


def test_debezium_incremental_snapshot_rows_take_the_stream_position():
    """Incremental-snapshot rows have no source.lsn (PostgresSourceInfoStructMaker) but a sequence: the stream
    position at which the chunk was emitted, between the changes streamed before and after it."""
    earlier = position("u", "false", '["2000","2100"]', 2100)
    chunk_row = position("r", "incremental", '["3000","3050"]', None)
    later = position("u", "false", '["3000","3060"]', 3060)
    assert earlier < chunk_row < later


def test_doc_example_snapshot_boolean_is_accepted():
    ev = DEC.decode("t", b'{"id":1}', dbz_value("r", None, {"id": 1}, snapshot=True))
    assert ev.snapshot == "true" and (ev.commit_lsn, ev.seq) == (24023119, 0)


def test_debezium_positions_after_a_resnapshot_that_kept_its_offsets():
    before = position("u", "false", '["4000","4100"]', 4100)  # the last change streamed, in T_m
    snap = position("r", "true", '["5000","6000"]', 6000)  # lastCommitLsn = end of T_m
    after = position("u", "false", '["5000","5100"]', 5100)  # T_m+1
    assert before < snap < after


def test_our_positions_are_exactly_the_events():
    ev = event(after={"item_code": "A", "price_fen": 1}, commit_lsn=9000, lsn=8000)
    for schemas in (True, False):
        (rec,) = encoder(schemas=schemas).records(ev)
        got = DEC.decode(rec.topic, rec.key, rec.value)
        assert (got.commit_lsn, got.seq, got.lsn) == (9000, 8000, 8000)
    snap = event(
        op="r", after={"item_code": "A"}, commit_lsn=5000, lsn=5000, seq=12, txid=None, snapshot="true"
    )
    (rec,) = encoder().records(snap)
    got = DEC.decode(rec.topic, rec.key, rec.value)
    assert (got.commit_lsn, got.seq, got.snapshot, got.txid) == (5000, 0, "true", None)


def test_data_collection_order_counts_per_table_within_a_transaction():
    enc = encoder(schemas=False)
    orders = []
    for table, seq, txid in [("a", 1, 1), ("b", 2, 1), ("a", 3, 1), ("a", 1, 2)]:
        ev = event(table=table, seq=seq, txid=txid, commit_lsn=1000 * txid, after={"item_code": "A"})
        orders.append(payload(enc.records(ev)[0].value)["transaction"])
    assert [(t["total_order"], t["data_collection_order"]) for t in orders] == [
        (1, 1),
        (2, 1),
        (3, 2),
        (1, 1),
    ]
    assert orders[0]["id"] == "1:1000" and orders[3]["id"] == "2:2000"


def test_before_and_after_with_different_scales_use_the_variable_scale_struct():
    ev = event(
        before={"item_code": "A", "p": Decimal("1.5")},
        after={"item_code": "A", "p": Decimal("1.25")},
        types=None,
    )
    (rec,) = encoder().records(ev)
    doc = json.loads(rec.value)
    assert doc["schema"]["fields"][1]["fields"][1]["name"] == "io.debezium.data.VariableScaleDecimal"
    assert doc["payload"]["before"]["p"] == {"scale": 1, "value": int_to_b64(15)}
    got = DEC.decode(rec.topic, rec.key, rec.value)
    assert str(got.before["p"]) == "1.5" and str(got.after["p"]) == "1.25"


def test_a_new_relation_layout_when_the_types_change():
    enc = encoder()
    first = json.loads(enc.records(event(after={"item_code": "A", "price_fen": 1}))[0].value)
    types = {"item_code": (1043, -1), "price_fen": (23, -1)}  # the column became int4
    second = json.loads(enc.records(event(after={"item_code": "A", "price_fen": 1}, types=types))[0].value)
    assert first["schema"]["fields"][1]["fields"][1]["type"] == "int64"
    assert second["schema"]["fields"][1]["fields"][1]["type"] == "int32"


def test_a_key_column_without_a_value_is_held():
    with pytest.raises(EncodeError, match="key column 'item_code' has no value"):
        encoder().records(event(after={"item_code": None, "price_fen": 1}))


def test_a_lane_picks_its_topic():
    from cdc.sinks.envelope import EnvelopeEncoder

    enc = EnvelopeEncoder("c", "pos", lane_topics={"priority": "pos.prices.fast"})
    assert enc.topic("public", "item_price") == "pos.public.item_price"
    assert enc.topic("public", "item_price", "bulk") == "pos.public.item_price.bulk"
    assert enc.topic("public", "item_price", "priority") == "pos.prices.fast"
