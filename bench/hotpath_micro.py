"""Per-change cost of each step of pos-cdc's hot path, timed in isolation (no profiler: cProfile and
pyinstrument inflate small, frequently called functions several-fold and misattribute the time).

    python bench/hotpath_micro.py [N]

The row is bench/run.py's item_price row (item_code text, store_id int4, channel text, price_fen int8,
updated_at timestamptz) as an Insert message, through the rename + money stages, into SqlSink.add, the
COPY-row building of PgMerge.merge, and psycopg's COPY write_row into a temp table of a throwaway cluster.
Compare the sum with the pos-cdc process's CPU seconds per change that bench/run.py reports.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cdc.config import ConnectorConfig  # noqa: E402
from cdc.events import CREATE, ChangeEvent  # noqa: E402
from cdc.metrics import Metrics  # noqa: E402
from cdc.sinks.sql import SqlSink  # noqa: E402
from cdc.sinks.sql.bookkeeping import key_text  # noqa: E402
from cdc.sources.pgoutput import Decoder  # noqa: E402
from cdc.stages import apply_stages, build_stages  # noqa: E402

COLUMNS = [
    (1, "item_code", 25),
    (0, "store_id", 23),
    (0, "channel", 25),
    (0, "price_fen", 20),
    (0, "updated_at", 1184),
]


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def relation_message(oid: int) -> bytes:
    out = (
        b"R"
        + struct.pack("!I", oid)
        + cstr("public")
        + cstr("item_price")
        + b"d"
        + struct.pack("!H", len(COLUMNS))
    )
    for flags, name, type_oid in COLUMNS:
        out += struct.pack("!B", flags) + cstr(name) + struct.pack("!Ii", type_oid, -1)
    return out


def insert_message(oid: int, i: int) -> bytes:
    values = [f"SKU{i:07d}", "0", "ONLINE", str(i * 7919 % 99900 + 100), "2024-05-06 07:08:09.123456+00"]
    out = b"I" + struct.pack("!I", oid) + b"N" + struct.pack("!H", len(values))
    for v in values:
        d = v.encode()
        out += b"t" + struct.pack("!I", len(d)) + d
    return out


def timed(label: str, n: int, fn, results: list) -> None:
    t0 = time.perf_counter()
    fn()
    us = (time.perf_counter() - t0) / n * 1e6
    results.append((label, us))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    cfg = ConnectorConfig.model_validate(
        {
            "name": "micro",
            "source": {"type": "postgres", "dsn": "host=x", "tables": ["public.item_price"]},
            "transforms": [
                {"type": "rename", "fields": {"item_code": "sku", "price_fen": "price"}},
                {"type": "money", "field": "price", "divide_by": 100, "scale": 2},
            ],
            "sink": {
                "type": "sql",
                "url": "postgresql+psycopg://x@127.0.0.1/x",
                "table": "product_price",
                "key": ["sku"],
            },
        }
    )
    dec = Decoder()
    dec.decode(relation_message(16384))
    msgs = [insert_message(16384, i) for i in range(n)]
    results: list[tuple[str, float]] = []
    decoded: list = []
    timed("pgoutput decode (Insert, 5 cols)", n, lambda: decoded.extend(map(dec.decode, msgs)), results)
    events: list[ChangeEvent] = []

    def make_events() -> None:
        for i, m in enumerate(decoded):
            rel = m.relation
            events.append(
                ChangeEvent(
                    CREATE,
                    rel.schema,
                    rel.name,
                    None,
                    m.new,
                    1,
                    1,
                    i,
                    0,
                    1,
                    "false",
                    "pos",
                    "micro",
                    rel.key_columns,
                )
            )

    timed("ChangeEvent construction", n, make_events, results)
    counter = Metrics().events.labels("micro", "public.item_price", "c")
    timed("events counter inc (prometheus)", n, lambda: [counter.inc() for _ in range(n)], results)
    stages = build_stages(cfg.transforms)
    out: list = []
    timed("stages rename + money", n, lambda: out.extend(apply_stages(stages, e) for e in events), results)
    sink = SqlSink(cfg)
    timed("SqlSink.add (key, pending dict)", n, lambda: [sink.add(e) for e in out], results)
    items = list(sink.buffer.pending.items())
    cols = ["sku", "store_id", "channel", "price", "updated_at"]
    rows: list = []

    def build_rows() -> None:
        for key, p in items:
            row, ev = p.row, p.ev
            vals = [row.get(c) for c in cols]
            vals += (key_text(key), p.op, ev.commit_lsn, ev.seq, ev.ts_ms, ev.txid)
            rows.append(vals)

    timed("merge: COPY row tuple + key_text", n, build_rows, results)

    from cdc.localpg import LocalPostgres

    with LocalPostgres() as pg:
        import psycopg

        with psycopg.connect(pg.dsn()) as conn:
            conn.execute(
                "CREATE TEMP TABLE st (sku text, store_id int, channel text, price numeric(12,2), "
                "updated_at timestamptz, __k text, __op char(1), __lsn bigint, __seq bigint, __ts bigint, __tx bigint)"
            )
            cur = conn.cursor()

            def copy() -> None:
                with cur.copy("COPY st FROM STDIN") as cp:
                    for r in rows:
                        cp.write_row(r)

            timed("COPY write_row (client, incl. flush)", n, copy, results)
    total = sum(us for _, us in results)
    print(f"per-change Python cost, {n} changes (µs/change):")
    for label, us in results:
        print(f"  {label:40s} {us:6.2f}  {us / total * 100:5.1f}%")
    print(f"  {'sum':40s} {total:6.2f}")
    fast_path(cfg, stages, msgs, dec, n)


def fast_path(cfg, stages, msgs, dec, n) -> None:
    """The fast path (cdc/fast/) on the same messages: the encoder alone, which replaces every step above
    but the COPY write (one write of the joined lines)."""
    import sqlalchemy as sa

    from cdc.fast import encode, encode_c, encode_mysql
    from cdc.fast.plan import plan_relation
    from cdc.sinks.sql.target import Target

    target = Target(cfg.sink, "micro", "postgresql")
    target.table = sa.Table(
        "product_price",
        sa.MetaData(),
        sa.Column("sku", sa.Text, primary_key=True),
        sa.Column("store_id", sa.Integer),
        sa.Column("channel", sa.Text),
        sa.Column("price", sa.Numeric(12, 2)),
        sa.Column("updated_at", sa.DateTime(timezone=True)),
    )
    plan, why = plan_relation(dec.relations[16384], stages, target)
    assert plan is not None, why
    lsns = list(range(10**9, 10**9 + n))
    args = (msgs, lsns, 0, plan.ncols, plan.slots, plan.key_index)
    print(f"fast path ({'compiled' if encode.__file__.endswith('.so') else 'pure Python'}):")
    for label, run in (("encode.py", encode.encode_run), ("encode_c.py", encode_c.encode_run)):
        for lean, mid, tail in ((False, b"\tu\t1\t", b"\t0\t1\t\\N\n"), (True, b'",1,', b',0,1,"u",null]')):
            lines: dict = {}
            t0 = time.perf_counter()
            run(*args, mid, tail, lines, {} if lean else None)
            t1 = time.perf_counter()
            form = "lean: line + entry" if lean else "COPY line with position"
            print(f"  {f'encode_run {label} ({form})':54s} {(t1 - t0) / n * 1e6:6.2f}")
    t1 = time.perf_counter()
    data = b"".join(lines.values())
    t2 = time.perf_counter()
    print(f"  {'join of the lines':54s} {(t2 - t1) / n * 1e6:6.2f}   ({len(data) / n:.0f} bytes/change)")

    target.dialect = "mysql"
    plan, why = plan_relation(dec.relations[16384], stages, target, "mysql")
    assert plan is not None, why
    for label, run in (
        ("encode_mysql.py", encode_mysql.encode_run),
        ("encode_c.py", encode_c.encode_run_mysql),
    ):
        lines, entries = {}, {}
        t0 = time.perf_counter()
        run(msgs, lsns, 0, plan.ncols, plan.slots, plan.key_index, b'",1,', b',0,1,"u",null]', lines, entries)
        t1 = time.perf_counter()
        print(f"  {f'encode_run {label} (MariaDB VALUES tuple + entry)':54s} {(t1 - t0) / n * 1e6:6.2f}")


if __name__ == "__main__":
    main()
