"""Unit tests of the pgoutput decoder. Messages are built by hand with `struct`, field by field, following
PostgreSQL's "Logical Replication Message Formats" (protocol version 1; integers in network byte order,
String = NUL-terminated)."""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.errors import TerminalError
from cdc.events import UNCHANGED_TOAST
from cdc.sources import pgoutput as po
from cdc.sources.pgoutput import (
    Begin,
    Column,
    Commit,
    Decoder,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Relation,
    Truncate,
    TypeMsg,
    Update,
    pg_epoch_us_to_unix_ms,
)

# ---------------------------------------------------------------------------------------------------------
# Message builders (one function per message format in the docs)
# ---------------------------------------------------------------------------------------------------------

UTC = dt.UTC


def cstr(text: str) -> bytes:
    """String: a NUL-terminated string."""
    return text.encode() + b"\0"


def begin_msg(final_lsn: int, ts_us: int, xid: int) -> bytes:
    # Byte1('B') Int64 final LSN, Int64 commit timestamp, Int32 xid
    return b"B" + struct.pack("!Q", final_lsn) + struct.pack("!q", ts_us) + struct.pack("!I", xid)


def commit_msg(flags: int, commit_lsn: int, end_lsn: int, ts_us: int) -> bytes:
    # Byte1('C') Int8 flags, Int64 commit LSN, Int64 end LSN, Int64 commit timestamp
    return (
        b"C"
        + struct.pack("!B", flags)
        + struct.pack("!Q", commit_lsn)
        + struct.pack("!Q", end_lsn)
        + struct.pack("!q", ts_us)
    )


def origin_msg(lsn: int, name: str) -> bytes:
    # Byte1('O') Int64 commit LSN on the origin, String name
    return b"O" + struct.pack("!Q", lsn) + cstr(name)


def type_msg(oid: int, schema: str, name: str) -> bytes:
    # Byte1('Y') Int32 type OID, String namespace, String name
    return b"Y" + struct.pack("!I", oid) + cstr(schema) + cstr(name)


def relation_msg(
    oid: int, schema: str, name: str, ident: str, columns: list[tuple[int, str, int, int]]
) -> bytes:
    # Byte1('R') Int32 OID, String namespace, String name, Int8 replica identity, Int16 ncols,
    # then per column: Int8 flags, String name, Int32 type OID, Int32 typmod
    out = b"R" + struct.pack("!I", oid) + cstr(schema) + cstr(name) + struct.pack("!B", ord(ident))
    out += struct.pack("!h", len(columns))
    for flags, colname, type_oid, typmod in columns:
        out += (
            struct.pack("!B", flags) + cstr(colname) + struct.pack("!I", type_oid) + struct.pack("!i", typmod)
        )
    return out


def tuple_data(values: list) -> bytes:
    """TupleData: Int16 ncols, then per column 'n' | 'u' | 't' Int32 len, bytes | 'b' Int32 len, bytes.

    A value is None (NULL), UNCHANGED_TOAST, a str (text format) or bytes (binary format)."""
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(value, bytes):
            out += b"b" + struct.pack("!i", len(value)) + value
        else:
            data = value.encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def insert_msg(oid: int, new: list) -> bytes:
    # Byte1('I') Int32 relation OID, Byte1('N'), TupleData
    return b"I" + struct.pack("!I", oid) + b"N" + tuple_data(new)


def update_msg(oid: int, new: list, old: list | None = None, old_kind: bytes = b"") -> bytes:
    # Byte1('U') Int32 relation OID, [Byte1('K'|'O') TupleData], Byte1('N') TupleData
    out = b"U" + struct.pack("!I", oid)
    if old is not None:
        out += old_kind + tuple_data(old)
    return out + b"N" + tuple_data(new)


def delete_msg(oid: int, old: list, old_kind: bytes) -> bytes:
    # Byte1('D') Int32 relation OID, Byte1('K'|'O') TupleData
    return b"D" + struct.pack("!I", oid) + old_kind + tuple_data(old)


def truncate_msg(oids: list[int], options: int) -> bytes:
    # Byte1('T') Int32 number of relations, Int8 option bits (1 CASCADE, 2 RESTART IDENTITY), Int32 OIDs
    out = b"T" + struct.pack("!i", len(oids)) + struct.pack("!B", options)
    for oid in oids:
        out += struct.pack("!I", oid)
    return out


def logical_msg(flags: int, lsn: int, prefix: str, content: bytes) -> bytes:
    # Byte1('M') Int8 flags, Int64 LSN, String prefix, Int32 content length, Byte_n content (protocol 1)
    return (
        b"M"
        + struct.pack("!B", flags)
        + struct.pack("!Q", lsn)
        + cstr(prefix)
        + struct.pack("!i", len(content))
        + content
    )


# type OIDs
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID, JSON = 16, 17, 18, 19, 20, 21, 23, 25, 26, 114
FLOAT4, FLOAT8, BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ = (
    700,
    701,
    1042,
    1043,
    1082,
    1083,
    1114,
    1184,
)
INTERVAL, TIMETZ, NUMERIC, UUID, JSONB, INT4_ARRAY = 1186, 1266, 1700, 2950, 3802, 1007

PRODUCTS = 16384
PRODUCT_COLS = [
    (1, "sku", TEXT, -1),
    (0, "title", VARCHAR, 104),
    (0, "stock", INT4, -1),
    (0, "price", NUMERIC, 655366),
    (0, "updated_at", TIMESTAMPTZ, -1),
    (0, "active", BOOL, -1),
]
ROW = ["SKU-1", "Beans", "42", "19.99", "2024-05-06 07:08:09.123456+00", "t"]
ROW_VALUES = {
    "sku": "SKU-1",
    "title": "Beans",
    "stock": 42,
    "price": Decimal("19.99"),
    "updated_at": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
    "active": True,
}


@pytest.fixture
def dec() -> Decoder:
    d = Decoder()
    d.decode(relation_msg(PRODUCTS, "public", "products", "d", PRODUCT_COLS))
    return d


def one_value(type_oid: int, text: str | None):
    """Decode `text` as the single column of type `type_oid` of an inserted row."""
    d = Decoder()
    d.decode(relation_msg(1, "public", "t", "d", [(1, "v", type_oid, -1)]))
    msg = d.decode(insert_msg(1, [text]))
    return msg.new["v"]


# ---------------------------------------------------------------------------------------------------------
# Transaction and schema messages
# ---------------------------------------------------------------------------------------------------------


def test_begin():
    msg = Decoder().decode(begin_msg(0x1_0000_16B3748, 768_000_000_123_456, 4_000_000_000))
    assert msg == Begin(final_lsn=0x1_0000_16B3748, commit_ts_us=768_000_000_123_456, xid=4_000_000_000)


def test_begin_negative_timestamp_before_2000():
    assert Decoder().decode(begin_msg(1, -1_000_000, 7)).commit_ts_us == -1_000_000


def test_commit():
    msg = Decoder().decode(commit_msg(0, 0x16B3800, 0x16B3830, 768_000_000_000_001))
    assert msg == Commit(flags=0, commit_lsn=0x16B3800, end_lsn=0x16B3830, commit_ts_us=768_000_000_000_001)


def test_origin():
    assert Decoder().decode(origin_msg(0xFFFF_FFFF_FFFF_FFFF, "pg_1234")) == Origin(2**64 - 1, "pg_1234")


def test_type_message_is_returned_and_remembered():
    d = Decoder()
    msg = d.decode(type_msg(16390, "public", "mood"))
    assert msg == TypeMsg(oid=16390, schema="public", name="mood")
    assert d.types[16390] is msg


def test_relation_message():
    d = Decoder()
    rel = d.decode(
        relation_msg(
            PRODUCTS,
            "shop",
            "products",
            "i",
            [(1, "store_id", INT4, -1), (1, "sku", TEXT, -1), (0, "price", NUMERIC, 655366)],
        )
    )
    assert isinstance(rel, Relation)
    assert d.relations[PRODUCTS] is rel
    assert (rel.oid, rel.schema, rel.name, rel.replica_identity) == (PRODUCTS, "shop", "products", "i")
    assert rel.columns == [
        Column("store_id", INT4, -1, True),
        Column("sku", TEXT, -1, True),
        Column("price", NUMERIC, 655366, False),
    ]
    assert rel.key_columns == ("store_id", "sku")
    assert len(rel.converters) == 3
    assert rel.converters[0]("7") == 7 and rel.converters[2]("1.50") == Decimal("1.50")


@pytest.mark.parametrize("ident", ["d", "n", "f", "i"])
def test_relation_replica_identities(ident):
    rel = Decoder().decode(relation_msg(5, "public", "t", ident, [(0, "a", INT4, -1)]))
    assert rel.replica_identity == ident
    assert rel.key_columns == ()


def test_relation_with_no_columns_and_pg_catalog_schema():
    rel = Decoder().decode(relation_msg(5, "", "t", "n", []))
    assert rel.schema == "" and rel.columns == [] and rel.key_columns == () and rel.converters == []


def test_relation_column_flag_other_bits_ignored():
    rel = Decoder().decode(relation_msg(5, "public", "t", "d", [(3, "a", INT4, -1), (2, "b", INT4, -1)]))
    assert rel.key_columns == ("a",)


def test_relation_built_directly_derives_keys_and_converters():
    rel = Relation(1, "public", "t", "d", [Column("id", INT8, -1, True), Column("n", TEXT, -1, False)])
    assert rel.key_columns == ("id",)
    assert rel.converters == [int, str]


def test_relation_redefined_mid_stream(dec):
    first = dec.decode(insert_msg(PRODUCTS, ROW))
    assert set(first.new) == set(ROW_VALUES)
    old_rel = dec.relations[PRODUCTS]

    # ALTER TABLE products ADD COLUMN barcode uuid: a new Relation message comes before the next change
    new_rel = dec.decode(
        relation_msg(PRODUCTS, "public", "products", "d", PRODUCT_COLS + [(0, "barcode", UUID, -1)])
    )
    assert dec.relations[PRODUCTS] is new_rel and new_rel is not old_rel
    barcode = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    second = dec.decode(insert_msg(PRODUCTS, ROW + [barcode]))
    assert second.relation is new_rel
    assert second.new == {**ROW_VALUES, "barcode": uuid.UUID(barcode)}
    # the earlier message still points at the relation as it was
    assert first.relation is old_rel and len(old_rel.columns) == 6
    # a tuple in the old shape no longer fits
    with pytest.raises(ValueError, match="tuple has 6 columns but relation public.products"):
        dec.decode(insert_msg(PRODUCTS, ROW))


def test_relation_redefined_with_type_change(dec):
    cols = [c if c[1] != "stock" else (0, "stock", NUMERIC, -1) for c in PRODUCT_COLS]
    dec.decode(relation_msg(PRODUCTS, "public", "products", "d", cols))
    assert dec.decode(insert_msg(PRODUCTS, ROW)).new["stock"] == Decimal(42)


# ---------------------------------------------------------------------------------------------------------
# Data messages
# ---------------------------------------------------------------------------------------------------------


def test_insert(dec):
    msg = dec.decode(insert_msg(PRODUCTS, ROW))
    assert isinstance(msg, Insert)
    assert msg.relation is dec.relations[PRODUCTS]
    assert msg.new == ROW_VALUES
    assert list(msg.new) == [c[1] for c in PRODUCT_COLS]  # column order kept


def test_insert_null_toast_and_binary_values(dec):
    msg = dec.decode(insert_msg(PRODUCTS, ["SKU-1", None, b"\x00\x00\x00\x2a", UNCHANGED_TOAST, None, None]))
    assert msg.new == {
        "sku": "SKU-1",
        "title": None,
        "stock": b"\x00\x00\x00\x2a",  # binary format: raw bytes, not converted
        "price": UNCHANGED_TOAST,
        "updated_at": None,
        "active": None,
    }
    assert msg.new["price"] is UNCHANGED_TOAST


def test_empty_text_value_is_empty_string_not_null(dec):
    assert dec.decode(insert_msg(PRODUCTS, ["", "", "0", "0", None, "f"])).new["title"] == ""


def test_update_without_old_tuple(dec):
    msg = dec.decode(update_msg(PRODUCTS, ROW))
    assert isinstance(msg, Update)
    assert msg.old is None and msg.old_kind is None
    assert msg.new == ROW_VALUES


def test_update_with_key_only_old_tuple_keeps_only_key_columns(dec):
    # the key changed: PostgreSQL sends 'K' with the old key and NULLs for every other column
    msg = dec.decode(update_msg(PRODUCTS, ROW, old=["SKU-0", None, None, None, None, None], old_kind=b"K"))
    assert msg.old_kind == "K"
    assert msg.old == {"sku": "SKU-0"}
    assert msg.new == ROW_VALUES


def test_update_key_only_with_composite_key():
    d = Decoder()
    d.decode(
        relation_msg(
            9, "public", "stock", "i", [(1, "store", INT4, -1), (0, "qty", INT4, -1), (1, "sku", TEXT, -1)]
        )
    )
    msg = d.decode(update_msg(9, ["2", "5", "B"], old=["1", None, "A"], old_kind=b"K"))
    assert msg.old == {"store": 1, "sku": "A"}
    assert msg.new == {"store": 2, "qty": 5, "sku": "B"}


def test_update_with_full_old_tuple_and_unchanged_toast():
    d = Decoder()
    cols = [
        (1, "id", INT8, -1),
        (1, "doc", JSONB, -1),
        (1, "price", NUMERIC, -1),
    ]  # FULL: every column flagged
    rel = d.decode(relation_msg(77, "public", "docs", "f", cols))
    assert rel.key_columns == ("id", "doc", "price")
    msg = d.decode(
        update_msg(77, ["1", UNCHANGED_TOAST, "2.00"], old=["1", UNCHANGED_TOAST, "1.00"], old_kind=b"O")
    )
    assert msg.old_kind == "O"
    assert msg.old == {"id": 1, "doc": UNCHANGED_TOAST, "price": Decimal("1.00")}
    assert msg.new == {"id": 1, "doc": UNCHANGED_TOAST, "price": Decimal("2.00")}
    assert msg.toasted  # the source tells the sink, which then keeps the stored doc
    # the new tuple decides: an unchanged value only in the old image is not one the sink must keep
    msg = d.decode(update_msg(77, ["1", "{}", "3.00"], old=["1", UNCHANGED_TOAST, "2.00"], old_kind=b"O"))
    assert not msg.toasted


def test_update_without_unchanged_toast_says_so(dec):
    assert dec.decode(update_msg(PRODUCTS, ROW)).toasted is False


def test_delete_key_only(dec):
    msg = dec.decode(delete_msg(PRODUCTS, ["SKU-1", None, None, None, None, None], b"K"))
    assert isinstance(msg, Delete)
    assert msg.old_kind == "K" and msg.old == {"sku": "SKU-1"}
    assert msg.relation is dec.relations[PRODUCTS]


def test_delete_full_old_row(dec):
    msg = dec.decode(delete_msg(PRODUCTS, ROW, b"O"))
    assert msg.old_kind == "O" and msg.old == ROW_VALUES


def test_truncate_several_relations_and_flags():
    d = Decoder()
    rels = [
        d.decode(relation_msg(oid, "public", f"t{oid}", "d", [(1, "id", INT4, -1)])) for oid in (10, 11, 12)
    ]
    for options, cascade, restart in [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]:
        msg = d.decode(truncate_msg([12, 10, 11], options))
        assert isinstance(msg, Truncate)
        assert msg.relations == [rels[2], rels[0], rels[1]]
        assert (msg.cascade, msg.restart_identity) == (cascade, restart)


def test_truncate_zero_relations():
    assert Decoder().decode(truncate_msg([], 0)) == Truncate([], False, False)


@pytest.mark.parametrize(
    ("flags", "content"), [(1, b"hello"), (0, b""), (0, b"\x00\xff binary \x00"), (1, "é".encode())]
)
def test_logical_message(flags, content):
    msg = Decoder().decode(logical_msg(flags, 0x16B3748, "pos.audit", content))
    assert msg == LogicalMessage(
        transactional=bool(flags), lsn=0x16B3748, prefix="pos.audit", content=content
    )
    assert type(msg.content) is bytes


def test_accepts_memoryview_and_bytearray(dec):
    raw = insert_msg(PRODUCTS, ROW)
    assert dec.decode(memoryview(raw)).new == ROW_VALUES
    assert dec.decode(bytearray(raw)).new == ROW_VALUES
    assert dec.decode(memoryview(b"xx" + raw)[2:]).new == ROW_VALUES
    assert dec.decode(memoryview(begin_msg(1, 2, 3))) == Begin(1, 2, 3)


def test_binary_value_is_bytes_even_from_memoryview(dec):
    msg = dec.decode(memoryview(insert_msg(PRODUCTS, ["a", None, b"\x01\x02", None, None, None])))
    assert msg.new["stock"] == b"\x01\x02" and type(msg.new["stock"]) is bytes


def test_full_transaction_sequence():
    d = Decoder()
    stream = [
        begin_msg(0x30, 1_000_000, 700),
        origin_msg(0x20, "upstream"),
        type_msg(16390, "public", "mood"),
        relation_msg(1, "public", "a", "d", [(1, "id", INT4, -1), (0, "m", 16390, -1)]),
        insert_msg(1, ["1", "happy"]),
        update_msg(1, ["1", "sad"]),
        delete_msg(1, ["1", None], b"K"),
        truncate_msg([1], 0),
        logical_msg(1, 0x28, "p", b"x"),
        commit_msg(0, 0x30, 0x58, 1_000_000),
    ]
    types = [type(d.decode(m)) for m in stream]
    assert types == [
        Begin,
        Origin,
        TypeMsg,
        Relation,
        Insert,
        Update,
        Delete,
        Truncate,
        LogicalMessage,
        Commit,
    ]


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        insert_msg(999, ["x"]),
        update_msg(999, ["x"]),
        delete_msg(999, ["x"], b"K"),
        truncate_msg([PRODUCTS, 999], 0),
    ],
    ids=["insert", "update", "delete", "truncate"],
)
def test_unknown_relation_is_terminal(dec, raw):
    with pytest.raises(TerminalError, match="relation oid 999"):
        dec.decode(raw)


def valid_messages() -> list[tuple[str, bytes]]:
    return [
        ("Begin", begin_msg(1, 2, 3)),
        ("Commit", commit_msg(0, 1, 2, 3)),
        ("Origin", origin_msg(1, "o")),
        ("Type", type_msg(1, "public", "mood")),
        ("Relation", relation_msg(PRODUCTS, "public", "products", "d", PRODUCT_COLS)),
        ("Insert", insert_msg(PRODUCTS, ROW)),
        ("Update", update_msg(PRODUCTS, ROW, old=["SKU-0", None, None, None, None, None], old_kind=b"K")),
        ("Update", update_msg(PRODUCTS, ROW, old=ROW, old_kind=b"O")),
        ("Update", update_msg(PRODUCTS, ["a", None, b"\x01", UNCHANGED_TOAST, None, "t"])),
        ("Delete", delete_msg(PRODUCTS, ROW, b"O")),
        ("Truncate", truncate_msg([PRODUCTS, PRODUCTS], 3)),
        ("logical decoding", logical_msg(1, 5, "prefix", b"content")),
    ]


@pytest.mark.parametrize(("what", "raw"), valid_messages(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_truncation_raises_value_error_naming_type_and_offset(dec, what, raw):
    for cut in range(1, len(raw)):
        with pytest.raises(ValueError, match=rf"pgoutput {what} message at offset \d+ \(of {cut} bytes\)"):
            dec.decode(raw[:cut])


@pytest.mark.parametrize(("what", "raw"), valid_messages(), ids=lambda v: v if isinstance(v, str) else "")
def test_trailing_bytes_raise_value_error(dec, what, raw):
    with pytest.raises(ValueError, match=rf"pgoutput {what} message"):
        dec.decode(raw + b"\x00")


def test_truncated_offset_points_at_the_field(dec):
    raw = insert_msg(PRODUCTS, ["SKU-1", "Beans"] + [None] * 4)
    # cut inside the second value's bytes: the error names the column and the offset of its kind byte
    cut = raw.index(b"Beans") + 2
    with pytest.raises(ValueError) as info:
        dec.decode(raw[:cut])
    offset = raw.index(b"Beans") - 5
    assert f"at offset {offset} " in str(info.value)
    assert "column 'title' of public.products" in str(info.value)


def test_empty_buffer():
    with pytest.raises(ValueError, match="offset 0"):
        Decoder().decode(b"")


@pytest.mark.parametrize("tag", [b"S", b"E", b"c", b"A", b"P", b"Z", b"\x00"])
def test_unknown_or_unsupported_message_type(tag):
    with pytest.raises(ValueError, match="offset 0"):
        Decoder().decode(tag + b"\x00" * 20)


def test_unknown_tuple_kind(dec):
    raw = insert_msg(PRODUCTS, ROW).replace(
        b"tSKU"[0:1] + struct.pack("!i", 5), b"x" + struct.pack("!i", 5), 1
    )
    with pytest.raises(ValueError, match=r"Insert message at offset 8 .*unknown tuple data kind"):
        dec.decode(raw)


def test_missing_new_tuple_tag(dec):
    with pytest.raises(ValueError, match="Insert message at offset 5"):
        dec.decode(b"I" + struct.pack("!I", PRODUCTS) + b"X" + tuple_data(ROW))
    with pytest.raises(ValueError, match="Update message at offset 5"):
        dec.decode(b"U" + struct.pack("!I", PRODUCTS) + b"X" + tuple_data(ROW))
    with pytest.raises(ValueError, match="Delete message at offset 5"):
        dec.decode(b"D" + struct.pack("!I", PRODUCTS) + b"N" + tuple_data(ROW))


def test_value_length_beyond_buffer(dec):
    raw = (
        b"I"
        + struct.pack("!I", PRODUCTS)
        + b"N"
        + struct.pack("!h", 6)
        + b"t"
        + struct.pack("!i", 10_000)
        + b"ab"
    )
    with pytest.raises(ValueError, match="Insert message at offset 8"):
        dec.decode(raw)


def test_negative_value_length(dec):
    raw = (
        b"I"
        + struct.pack("!I", PRODUCTS)
        + b"N"
        + struct.pack("!h", 6)
        + b"t"
        + struct.pack("!i", -1)
        + b"ab"
    )
    with pytest.raises(ValueError, match="Insert message"):
        dec.decode(raw)


def test_unterminated_string():
    with pytest.raises(ValueError, match="Origin message at offset 9"):
        Decoder().decode(b"O" + struct.pack("!Q", 1) + b"no-nul")


def test_invalid_utf8_in_name():
    with pytest.raises(ValueError, match="Relation message"):
        Decoder().decode(b"R" + struct.pack("!I", 1) + b"\xff\xfe\x00t\x00d" + struct.pack("!h", 0))


def test_unconvertible_value_names_the_column(dec):
    bad = ["SKU-1", "Beans", "forty-two", "19.99", "2024-05-06 07:08:09+00", "t"]
    with pytest.raises(
        ValueError, match=r"Update message at offset \d+ .*column 'stock' of public\.products"
    ):
        dec.decode(update_msg(PRODUCTS, bad))
    bad = ["SKU-1", "Beans", "1", "nineteen", "2024-05-06 07:08:09+00", "t"]
    with pytest.raises(ValueError, match="column 'price'"):
        dec.decode(insert_msg(PRODUCTS, bad))
    bad = ["SKU-1", "Beans", "1", "1", "yesterday", "t"]
    with pytest.raises(ValueError, match="column 'updated_at'"):
        dec.decode(insert_msg(PRODUCTS, bad))
    bad = ["SKU-1", "Beans", "1", "1", None, "maybe"]
    with pytest.raises(ValueError, match="column 'active'"):
        dec.decode(insert_msg(PRODUCTS, bad))


def test_decoder_still_works_after_an_error(dec):
    with pytest.raises(ValueError):
        dec.decode(insert_msg(PRODUCTS, ROW)[:-3])
    assert dec.decode(insert_msg(PRODUCTS, ROW)).new == ROW_VALUES


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=st.sampled_from(list(b"BCORYIUDTM")), body=st.binary(max_size=80))
def test_fuzz_only_value_or_terminal_errors(dec, tag, body):
    try:
        dec.decode(bytes([tag]) + body)
    except (ValueError, TerminalError):
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_corrupted_valid_messages(dec, data):
    _, raw = data.draw(st.sampled_from(valid_messages()))
    i = data.draw(st.integers(0, len(raw) - 1))
    b = data.draw(st.integers(0, 255))
    try:
        dec.decode(raw[:i] + bytes([b]) + raw[i + 1 :])
    except (ValueError, TerminalError):
        pass


# ---------------------------------------------------------------------------------------------------------
# Converters
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [INT2, INT4, INT8, OID])
@pytest.mark.parametrize("text", ["0", "-32768", "2147483647", "-9223372036854775808", "4294967295"])
def test_integers(oid, text):
    value = one_value(oid, text)
    assert value == int(text) and type(value) is int


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "-0.01",
        "0.00",
        "19.99",
        "12345678901234567890123456789012345678",  # 38 digits
        "-12345678901234567890123456789012345678.12345678901234567890",
        "0.000000000000000000000000000000000000000001",
        "1" + "0" * 130,
    ],
)
def test_numeric_exact(text):
    value = one_value(NUMERIC, text)
    assert type(value) is Decimal
    assert str(value) == text or value == Decimal(text)
    assert value.as_tuple() == Decimal(text).as_tuple()  # digits and exponent kept: exact, no float


def test_numeric_38_digits_not_rounded():
    value = one_value(NUMERIC, "99999999999999999999999999999999999999")
    assert value + 1 == Decimal("1" + "0" * 38)


def test_numeric_negative_small_keeps_scale():
    assert str(one_value(NUMERIC, "-0.01")) == "-0.01"
    assert str(one_value(NUMERIC, "1.50")) == "1.50"


def test_numeric_special_values():
    assert one_value(NUMERIC, "NaN").is_nan()
    assert one_value(NUMERIC, "Infinity") == Decimal("Infinity")
    assert one_value(NUMERIC, "-Infinity") == Decimal("-Infinity")
    assert all(type(one_value(NUMERIC, t)) is Decimal for t in ["NaN", "Infinity", "-Infinity"])


@pytest.mark.parametrize("oid", [FLOAT4, FLOAT8])
def test_floats(oid):
    assert one_value(oid, "1.5") == 1.5
    assert one_value(oid, "-1.2345678901234567e+300") == -1.2345678901234567e300
    assert one_value(oid, "0.1") == 0.1
    assert one_value(oid, "Infinity") == float("inf")
    assert one_value(oid, "-Infinity") == float("-inf")
    nan = one_value(oid, "NaN")
    assert type(nan) is float and nan != nan


@pytest.mark.parametrize("oid", [TEXT, VARCHAR, BPCHAR, NAME, CHAR])
def test_text_types(oid):
    assert one_value(oid, "héllo wörld ✓") == "héllo wörld ✓"


def test_bpchar_keeps_padding():
    assert one_value(BPCHAR, "ab   ") == "ab   "


@pytest.mark.parametrize(("text", "expected"), [("t", True), ("f", False)])
def test_bool(text, expected):
    assert one_value(BOOL, text) is expected


def test_date():
    assert one_value(DATE, "2024-02-29") == dt.date(2024, 2, 29)
    assert one_value(DATE, "0001-01-01") == dt.date(1, 1, 1)


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (DATE, "infinity"),
        (DATE, "-infinity"),
        (DATE, "0044-03-15 BC"),
        (DATE, "10000-01-01"),
        (TIMESTAMP, "infinity"),
        (TIMESTAMP, "-infinity"),
        (TIMESTAMP, "0044-03-15 12:00:00 BC"),
        (TIMESTAMP, "294276-12-31 23:59:59.999999"),
        (TIMESTAMPTZ, "infinity"),
        (TIMESTAMPTZ, "-infinity"),
        (TIMESTAMPTZ, "4713-01-01 00:00:00+00 BC"),
        (TIMESTAMPTZ, "12345-06-07 08:09:10+00"),
        (TIME, "24:00:00"),
        (TIMETZ, "24:00:00+00"),
    ],
)
def test_unrepresentable_dates_stay_text(oid, text):
    value = one_value(oid, text)
    assert value == text and type(value) is str


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:00", dt.time(0, 0)),
        ("23:59:59.999999", dt.time(23, 59, 59, 999999)),
        ("12:34:56.5", dt.time(12, 34, 56, 500000)),
    ],
)
def test_time(text, expected):
    value = one_value(TIME, text)
    assert value == expected and value.tzinfo is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12:34:56+00", dt.time(12, 34, 56, tzinfo=UTC)),
        (
            "12:34:56.123+05:30",
            dt.time(12, 34, 56, 123000, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        ),
        ("01:02:03-08", dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=-8)))),
        (
            "01:02:03+05:53:28",
            dt.time(1, 2, 3, tzinfo=dt.timezone(dt.timedelta(seconds=5 * 3600 + 53 * 60 + 28))),
        ),
    ],
)
def test_timetz(text, expected):
    value = one_value(TIMETZ, text)
    assert value == expected and value.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-06 07:08:09", dt.datetime(2024, 5, 6, 7, 8, 9)),
        ("2024-05-06 07:08:09.1", dt.datetime(2024, 5, 6, 7, 8, 9, 100000)),
        ("2024-05-06 07:08:09.123456", dt.datetime(2024, 5, 6, 7, 8, 9, 123456)),
        ("0099-12-31 00:00:00", dt.datetime(99, 12, 31)),
    ],
)
def test_timestamp_is_naive(text, expected):
    value = one_value(TIMESTAMP, text)
    assert value == expected and value.tzinfo is None


@pytest.mark.parametrize(
    ("text", "micro", "offset_s"),
    [
        ("2024-05-06 07:08:09+00", 0, 0),
        ("2024-05-06 07:08:09.1+00", 100000, 0),
        ("2024-05-06 07:08:09.12+00", 120000, 0),
        ("2024-05-06 07:08:09.123+00", 123000, 0),
        ("2024-05-06 07:08:09.1234+00", 123400, 0),
        ("2024-05-06 07:08:09.12345+00", 123450, 0),
        ("2024-05-06 07:08:09.123456+00", 123456, 0),
        ("2024-05-06 07:08:09+05", 0, 5 * 3600),
        ("2024-05-06 07:08:09.5-08", 500000, -8 * 3600),
        ("2024-05-06 07:08:09+05:30", 0, 5 * 3600 + 30 * 60),
        ("2024-05-06 07:08:09.000001-03:30", 1, -(3 * 3600 + 30 * 60)),
        ("2024-05-06 07:08:09+05:30:15", 0, 5 * 3600 + 30 * 60 + 15),
        ("2024-05-06 07:08:09.75-00:25:21", 750000, -(25 * 60 + 21)),
    ],
)
def test_timestamptz_offsets_and_precisions(text, micro, offset_s):
    value = one_value(TIMESTAMPTZ, text)
    assert isinstance(value, dt.datetime)
    assert value.utcoffset() == dt.timedelta(seconds=offset_s)
    assert (value.year, value.month, value.day, value.hour, value.minute, value.second) == (
        2024,
        5,
        6,
        7,
        8,
        9,
    )
    assert value.microsecond == micro


def test_timestamptz_utc_instant():
    value = one_value(TIMESTAMPTZ, "2024-05-06 12:00:00+05:30")
    assert value == dt.datetime(2024, 5, 6, 6, 30, tzinfo=UTC)


def test_uuid():
    assert one_value(UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11") == uuid.UUID(
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    )


@pytest.mark.parametrize("oid", [JSON, JSONB])
def test_json_is_text_untouched(oid):
    text = '{"b": 1.10, "a": [1, 2], "s": "\\u00e9"}'
    value = one_value(oid, text)
    assert value == text and type(value) is str


def test_bytea_hex():
    assert one_value(BYTEA, "\\x") == b""
    assert one_value(BYTEA, "\\x00ff10") == b"\x00\xff\x10"
    assert one_value(BYTEA, "\\xDEADBEEF") == b"\xde\xad\xbe\xef"


def test_bytea_escape_format():
    assert one_value(BYTEA, "ab\\\\c\\000\\377") == b"ab\\c\x00\xff"
    with pytest.raises(ValueError, match="column 'v'"):
        one_value(BYTEA, "bad\\9")


@pytest.mark.parametrize(
    ("oid", "text"),
    [
        (INTERVAL, "1 year 2 mons 3 days 04:05:06.5"),
        (INT4_ARRAY, "{1,2,NULL}"),
        (16390, "happy"),  # an enum
        (790, "$1,000.00"),  # money
        (869, "192.168.0.1/24"),  # inet
    ],
)
def test_other_types_are_text_as_sent(oid, text):
    value = one_value(oid, text)
    assert value == text and type(value) is str


def test_null_for_every_type():
    for oid in [
        BOOL,
        BYTEA,
        INT4,
        NUMERIC,
        FLOAT8,
        TEXT,
        DATE,
        TIME,
        TIMETZ,
        TIMESTAMP,
        TIMESTAMPTZ,
        UUID,
        JSONB,
    ]:
        assert one_value(oid, None) is None


def test_converter_for():
    assert po.converter_for(NUMERIC) is Decimal
    assert po.converter_for(123456)("x") == "x"


def test_datetime_fallback_parser():
    from cdc.sources import pg_values

    fb = pg_values._parse_datetime_fallback
    assert fb("2024-05-06 07:08:09.1234567+05", "datetime") == dt.datetime(
        2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5))
    )
    assert fb("2024-05-06T07:08:09+0530", "datetime").utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert fb("2024-05-06 07:08:09", "datetime") == dt.datetime(2024, 5, 6, 7, 8, 9)
    assert fb("07:08:09.5-03", "time") == dt.time(7, 8, 9, 500000, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    assert fb("2024-05-06", "date") == dt.date(2024, 5, 6)
    assert fb("infinity", "date") == "infinity"
    for bad, want in [
        ("2024-05-06", "time"),
        ("07:08:09", "date"),
        ("junk", "datetime"),
        ("2024-05-06+05", "date"),
    ]:
        with pytest.raises(ValueError):
            fb(bad, want)


# ---------------------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------------------


def test_pg_epoch_conversion():
    assert pg_epoch_us_to_unix_ms(0) == 946_684_800_000
    assert pg_epoch_us_to_unix_ms(1_999) == 946_684_800_001
    assert pg_epoch_us_to_unix_ms(-946_684_800_000_000) == 0
    # 2024-05-06 07:08:09.123456 UTC
    instant = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    us = (instant - dt.datetime(2000, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
    assert pg_epoch_us_to_unix_ms(us) == int(instant.timestamp() * 1000)


def test_begin_timestamp_to_unix_ms():
    msg = Decoder().decode(begin_msg(1, 0, 1))
    assert pg_epoch_us_to_unix_ms(msg.commit_ts_us) == 946_684_800_000
