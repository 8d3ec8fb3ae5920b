"""Column types round-trip exactly (snapshot and stream), NaN prices are held, unchanged TOAST is kept."""

from __future__ import annotations

import hashlib
import random
import string
import time
from decimal import Decimal

import psycopg
import pytest

from tests.integration.helpers import Running, wait_until
from tests.integration.support import held_rows

COLUMNS = """
    id int PRIMARY KEY,
    c_int2 smallint, c_int4 integer, c_int8 bigint,
    c_num numeric, c_num38 numeric(38,0), c_num12 numeric(12,2),
    c_real real, c_double double precision,
    c_text text, c_varchar varchar(40), c_char char(5),
    c_bool boolean, c_date date, c_time time, c_ts timestamp, c_tstz timestamptz,
    c_uuid uuid, c_json json, c_jsonb jsonb, c_bytea bytea
"""
NAMES = [
    "id",
    "c_int2",
    "c_int4",
    "c_int8",
    "c_num",
    "c_num38",
    "c_num12",
    "c_real",
    "c_double",
    "c_text",
    "c_varchar",
    "c_char",
    "c_bool",
    "c_date",
    "c_time",
    "c_ts",
    "c_tstz",
    "c_uuid",
    "c_json",
    "c_jsonb",
    "c_bytea",
]

# one row per tuple (without id): every value given as PostgreSQL input text, None for NULL
VALUES = [
    (
        "0",
        "0",
        "0",
        "0",
        "0",
        "0.00",
        "0",
        "0",
        "",
        "",
        "",
        "false",
        "2024-02-29",
        "00:00:00",
        "2024-01-01 00:00:00",
        "2000-01-01 00:00:00+00",
        "00000000-0000-0000-0000-000000000000",
        "{}",
        "{}",
        "\\x",
    ),
    (
        "-32768",
        "-2147483648",
        "-9223372036854775808",
        "-1.5",
        "-99999999999999999999999999999999999999",
        "-0.01",
        "-3.4028235e38",
        "-1.7976931348623157e308",
        "quote ' \" back\\slash, tab\t newline\n cr\r end",
        "ünïcødé 价格 🙂",
        "ab",
        "true",
        "0001-01-01",
        "23:59:59.999999",
        "1970-01-01 00:00:00",
        "2024-06-30 23:59:59.123456+08",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        '{"b": 1, "a": [1, 2.50, "x"],   "b": 2}',
        '{"a": 1, "b": {"c": [true, null, 1.10]}}',
        "\\x0001ff5c78275c",
    ),
    (
        "32767",
        "2147483647",
        "9223372036854775807",
        "12345678901234567890.123456789012345678901234567890",
        "99999999999999999999999999999999999999",
        "9999999999.99",
        "1.2345679",
        "0.1",
        "x" * 3000,
        "v" * 40,
        "abcde",
        "true",
        "9999-12-31",
        "12:34:56.5",
        "2024-01-01 12:34:56.789012",
        "1999-12-31 23:59:59.999999-05:30",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "[1, 2, 3]",
        '"just a string"',
        "\\xdeadbeef" + "00" * 100,
    ),
    (
        "1",
        "-1",
        "1",
        "0.00000000000000000001",
        "1",
        "1.10",
        "1e-45",
        "5e-324",
        "NULL",
        "null",
        "  x  ",
        "false",
        "1900-03-01",
        "00:00:00.000001",
        "1900-01-01 00:00:00.000001",
        "2038-01-19 03:14:08+00",
        "123e4567-e89b-12d3-a456-426614174000",
        "null",
        "null",
        "\\x5c",
    ),
    (
        "2",
        "2",
        "-2",
        "-0.000",
        "-12345678901234567890123456789012345678",
        "-9999999999.99",
        "-0",
        "-0",
        "日本語",
        "\\",
        "\\",
        "true",
        "2000-01-01",
        "13:00:00",
        "2100-12-31 23:59:59",
        "1970-01-01 00:00:00+00",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        '{"k": "v\\u00e9"}',
        '{"nested": {"deep": [1, [2, [3]]]}}',
        "\\xff",
    ),
    (
        "3",
        "3",
        "3",
        "1.10",
        "10",
        "0.10",
        "3.4028235e38",
        "1.7976931348623157e308",
        "x",
        "y",
        "z",
        "false",
        "2024-12-31",
        "06:07:08",
        "2024-12-31 23:59:59.999999",
        "2024-12-31 23:59:59.999999+14",
        "6ba7b811-9dad-11d1-80b4-00c04fd430c8",
        "{}",
        "[]",
        "\\x0a0d09",
    ),
]
NULL_ROW = (None,) * (len(NAMES) - 1)

TYPES_CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.all_types]}
sink: {type: sql, url: "@STORE@", table: all_types_copy, key: [id]}
"""


def insert_rows(env, first_id: int, rows) -> None:
    cols = ", ".join(NAMES)
    marks = ", ".join(["%s"] * len(NAMES))
    with psycopg.connect(env.pos_dsn) as conn:
        for i, row in enumerate(rows):
            conn.execute(f"INSERT INTO all_types ({cols}) VALUES ({marks})", (str(first_id + i), *row))
        conn.commit()


def as_text(run, table: str) -> list[tuple]:
    """Every column as PostgreSQL's own text output (the exact value: scale of a numeric, bytes, JSON text)."""
    cols = ", ".join(f"{c}::text" for c in NAMES)
    return run(f"SELECT {cols} FROM {table} ORDER BY id")


def as_python(run, table: str) -> list[tuple]:
    return run(f"SELECT {', '.join(NAMES)} FROM {table} ORDER BY id")


def test_types_round_trip_exactly(env):
    env.pos(f"CREATE TABLE all_types ({COLUMNS})")
    env.store(f"CREATE TABLE all_types_copy ({COLUMNS})")
    insert_rows(env, 1, [*VALUES, NULL_ROW])  # copied by the snapshot
    with Running(env.write_config(TYPES_CONFIG)) as r:
        wait_until(lambda: env.store("SELECT count(*) FROM all_types_copy")[0][0] == 7, running=r)
        insert_rows(env, 101, [*VALUES, NULL_ROW])  # streamed inserts
        insert_rows(env, 201, [VALUES[0]] * 7)
        # streamed updates: every column changes, including to and from NULL
        with psycopg.connect(env.pos_dsn) as conn:
            sets = ", ".join(f"{c} = s.{c}" for c in NAMES[1:])
            for dst, src in [(201, 102), (202, 103), (203, 104), (204, 105), (205, 106), (206, 107), (1, 7)]:
                conn.execute(
                    f"UPDATE all_types t SET {sets} FROM all_types s WHERE t.id = %s AND s.id = %s",
                    (dst, src),
                )
            conn.execute("UPDATE all_types SET c_num = 'NaN' WHERE id = 207")  # NaN in a plain numeric column
            conn.commit()
        wait_until(
            lambda: as_text(env.store, "all_types_copy") == as_text(env.pos, "all_types"),
            running=r,
            what="all rows equal, as text",
        )
    pos_text, store_text = as_text(env.pos, "all_types"), as_text(env.store, "all_types_copy")
    assert len(pos_text) == 21
    for p, s in zip(pos_text, store_text, strict=True):
        assert p == s
    pos_py, store_py = as_python(env.pos, "all_types"), as_python(env.store, "all_types_copy")
    assert len(pos_py) == len(store_py) == 21
    for p, s in zip(pos_py, store_py, strict=True):
        for name, a, b in zip(NAMES, p, s, strict=True):
            if isinstance(a, Decimal):  # same digits and same exponent, not merely equal (1.10 vs 1.1)
                assert a.as_tuple() == b.as_tuple() or (a.is_nan() and b.is_nan()), (name, a, b)
            elif isinstance(a, float) and a != a:
                assert b != b, (name, a, b)
            else:
                assert type(a) is type(b) and a == b, (name, a, b)
    by_id = {row[0]: row for row in store_py}
    assert by_id[3][NAMES.index("c_num38")] == Decimal("99999999999999999999999999999999999999")
    assert by_id[2][NAMES.index("c_num38")] == Decimal("-99999999999999999999999999999999999999")
    assert str(by_id[103][NAMES.index("c_num")]) == "12345678901234567890.123456789012345678901234567890"
    assert by_id[102][NAMES.index("c_bytea")] == b"\x00\x01\xff\\x'\\"
    assert all(v is None for v in by_id[7][1:]) and all(v is None for v in by_id[1][1:])
    assert held_rows(env) == []


NAN_CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.item_price]}
transforms:
  - {type: money, field: price, scale: 2}
sink: {type: sql, url: "@STORE@", table: product_price, key: [item_code]}
"""


def test_nan_price_is_held_and_the_rest_flows_on(env):
    env.pos("CREATE TABLE item_price (item_code text PRIMARY KEY, price numeric)")
    env.store("CREATE TABLE product_price (item_code text PRIMARY KEY, price numeric(12,2))")
    env.pos("INSERT INTO item_price VALUES ('A', 1.005), ('B', 2), ('SNAP_NAN', 'NaN')")

    def store():
        return dict(env.store("SELECT item_code, price FROM product_price"))

    with Running(env.write_config(NAN_CONFIG)) as r:
        wait_until(lambda: len(store()) == 2, running=r, what="snapshot applied")
        env.pos("INSERT INTO item_price VALUES ('NEW_NAN', 'NaN')")
        env.pos("UPDATE item_price SET price = 'NaN' WHERE item_code = 'A'")
        with psycopg.connect(env.pos_dsn) as conn:  # a NaN in the middle of a transaction
            conn.execute("INSERT INTO item_price VALUES ('C', 3.333)")
            conn.execute("UPDATE item_price SET price = 'NaN' WHERE item_code = 'B'")
            conn.execute("INSERT INTO item_price VALUES ('D', 4)")
            conn.commit()
        env.pos("INSERT INTO item_price VALUES ('MARK', 9)")
        wait_until(lambda: "MARK" in store(), running=r, what="changes after the NaNs")
        time.sleep(0.3)
        assert store() == {
            "A": Decimal("1.01"),
            "B": Decimal("2.00"),
            "C": Decimal("3.33"),
            "D": Decimal("4.00"),
            "MARK": Decimal("9.00"),
        }
        held = held_rows(env)
        assert [(h[0], h[1], h[2], h[3], h[4]) for h in held] == [
            ("dead_letter", "held", "SNAP_NAN", "public.item_price", "money#1"),
            ("dead_letter", "held", "NEW_NAN", "public.item_price", "money#1"),
            ("dead_letter", "held", "A", "public.item_price", "money#1"),
            ("dead_letter", "held", "B", "public.item_price", "money#1"),
        ]
        assert all("NaN" in h[5] for h in held), [h[5] for h in held]
        # the key flows again once its price is a number
        env.pos("UPDATE item_price SET price = 7.5 WHERE item_code = 'A'")
        wait_until(lambda: store().get("A") == Decimal("7.50"), running=r, what="A after its NaN")
    assert "SNAP_NAN" not in store() and "NEW_NAN" not in store()
    assert len(held_rows(env)) == 4


TOAST_CONFIG = """
name: @NAME@
source: {type: postgres, dsn: "@POS@", tables: [public.doc]}
sink: {type: sql, url: "@STORE@", table: doc_copy, key: [id], batch_max_ms: 2000}
"""


def big_text(seed: int, size: int = 100_000) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices(string.ascii_letters + string.digits + string.punctuation, k=size))


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@pytest.mark.parametrize("body_null", ["", "NOT NULL"])
def test_unchanged_toast_value_is_kept(env, body_null):
    env.pos("CREATE TABLE doc (id int PRIMARY KEY, price numeric(12,2), body text)")
    env.store(f"CREATE TABLE doc_copy (id int PRIMARY KEY, price numeric(12,2), body text {body_null})")
    bodies = {i: big_text(i) for i in range(1, 6)}
    env.pos("INSERT INTO doc VALUES (1, 1.00, %s), (2, 2.00, %s)", bodies[1], bodies[2])
    # stored out of line, uncompressed (random text does not compress): updates leave it unsent
    assert env.pos("SELECT pg_column_size(body) >= 100000 FROM doc WHERE id = 1") == [(True,)]

    def sink_docs():
        return {
            i: (p, b and md5(b), b and len(b))
            for i, p, b in env.store("SELECT id, price, body FROM doc_copy")
        }

    def expect(prices: dict[int, str]):
        return {i: (Decimal(p), md5(bodies[i]), 100_000) for i, p in prices.items()}

    with Running(env.write_config(TOAST_CONFIG)) as r:
        wait_until(lambda: sink_docs() == expect({1: "1.00", 2: "2.00"}), running=r, what="snapshot")
        # 1) the row is in the sink already; one price update per transaction, each its own batch
        for p in ("1.10", "1.20", "1.30"):
            env.pos("UPDATE doc SET price = %s WHERE id = 1", p)
            wait_until(lambda p=p: sink_docs()[1][0] == Decimal(p), running=r, what=f"price {p}")
            assert sink_docs()[1] == (Decimal(p), md5(bodies[1]), 100_000)
        # 2) several price-only updates in one transaction (one batch) on a row in the sink
        with psycopg.connect(env.pos_dsn) as conn:
            for p in ("2.10", "2.20", "2.30"):
                conn.execute("UPDATE doc SET price = %s WHERE id = 2", (p,))
            conn.commit()
        # 3) several separate transactions landing in one batch (batch_max_ms is 2 s here)
        with psycopg.connect(env.pos_dsn, autocommit=True) as conn:
            for p in ("1.40", "1.50", "1.60"):
                conn.execute("UPDATE doc SET price = %s WHERE id = 1", (p,))
        # 4) insert and price-only updates in the same batch: the row is not in the sink yet
        with psycopg.connect(env.pos_dsn) as conn:
            conn.execute("INSERT INTO doc VALUES (3, 3.00, %s)", (bodies[3],))
            conn.execute("UPDATE doc SET price = 3.10 WHERE id = 3")
            conn.execute("UPDATE doc SET price = 3.20 WHERE id = 3")
            conn.commit()
        with psycopg.connect(env.pos_dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO doc VALUES (4, 4.00, %s)", (bodies[4],))
            conn.execute("UPDATE doc SET price = 4.10 WHERE id = 4")
            conn.execute("UPDATE doc SET price = 4.20 WHERE id = 4")
        wait_until(
            lambda: sink_docs() == expect({1: "1.60", 2: "2.30", 3: "3.20", 4: "4.20"}),
            running=r,
            what="all price updates, bodies intact",
        )
        # 5) the body itself changes, then the price alone: the new body stays
        bodies[1] = bodies[5]
        env.pos("UPDATE doc SET body = %s WHERE id = 1", bodies[1])
        env.pos("UPDATE doc SET price = 1.70 WHERE id = 1")
        wait_until(
            lambda: sink_docs() == expect({1: "1.70", 2: "2.30", 3: "3.20", 4: "4.20"}),
            running=r,
            what="new body kept",
        )
    pos_rows = env.pos("SELECT id, price, md5(body), length(body) FROM doc ORDER BY id")
    assert env.store("SELECT id, price, md5(body), length(body) FROM doc_copy ORDER BY id") == pos_rows
    assert env.store("SELECT count(*) FROM doc_copy WHERE body LIKE '%%unavailable%%' OR body IS NULL") == [
        (0,)
    ]


def test_unchanged_toast_value_survives_a_primary_key_change(env):
    """UPDATE doc SET id = 11 WHERE id = 10 moves the row; its large body is not sent (unchanged TOAST), and
    the moved row in the storefront must still carry it."""
    env.pos("CREATE TABLE doc (id int PRIMARY KEY, price numeric(12,2), body text)")
    env.store("CREATE TABLE doc_copy (id int PRIMARY KEY, price numeric(12,2), body text)")
    body = big_text(10)
    env.pos("INSERT INTO doc VALUES (10, 1.00, %s)", body)

    def sink_docs():
        return {i: (p, b and md5(b)) for i, p, b in env.store("SELECT id, price, body FROM doc_copy")}

    with Running(env.write_config(TOAST_CONFIG)) as r:
        wait_until(lambda: sink_docs() == {10: (Decimal("1.00"), md5(body))}, running=r, what="snapshot")
        env.pos("UPDATE doc SET id = 11 WHERE id = 10")
        wait_until(lambda: list(sink_docs()) == [11], running=r, what="row moved")
        env.pos("UPDATE doc SET id = 12, price = 2.00 WHERE id = 11")
        wait_until(lambda: list(sink_docs()) == [12], running=r, what="row moved again")
        time.sleep(0.3)
    assert env.store("SELECT id, price, md5(body) FROM doc_copy") == env.pos(
        "SELECT id, price, md5(body) FROM doc"
    )
    assert sink_docs() == {12: (Decimal("2.00"), md5(body))}
