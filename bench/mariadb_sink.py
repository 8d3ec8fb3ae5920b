"""MariaDB sink benchmark: pos-cdc's `sql` sink vs MariaDB's own multi-row INSERT … ON DUPLICATE KEY UPDATE.

Same server, same table shape, same 200k-row bulk reprice, in one run:
  native:  pymysql, multi-row INSERT … ON DUPLICATE KEY UPDATE in chunks of 1000 rows, one transaction
           (statements built before the clock: the server's rate)
  pos-cdc: 200k update ChangeEvents (built beforehand, as the source delivers them) through SqlSink.add(),
           write_async() every batch_size changes (as the pipeline does) and one commit, recording each
           key's position (cdc_applied) as always
Each side first loads the rows (insert pass), then reprices all of them (update pass, what is timed).

    python bench/mariadb_sink.py [--rows 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from cdc.cli import tune_gc
from cdc.config import load_config
from cdc.events import ChangeEvent
from cdc.localmariadb import LocalMariaDB
from cdc.sinks.sql import SqlSink

DDL = "CREATE TABLE {t} (sku varchar(64) PRIMARY KEY, price decimal(12,2) NOT NULL, name varchar(100))"


def native(server: LocalMariaDB, rows: list[tuple], chunk: int = 1000) -> float:
    """MariaDB's own rate: the statements are built before the clock starts (as the pos-cdc side gets its
    events built), so only sending them and the server's work are timed."""
    conn = server.connect("bench")
    conn.autocommit(False)
    cur = conn.cursor()
    statements = []
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        statements.append(
            cur.mogrify(
                "INSERT INTO native_price (sku, price, name) VALUES "
                + ", ".join(["(%s, %s, %s)"] * len(part))
                + " ON DUPLICATE KEY UPDATE price = VALUES(price), name = VALUES(name)",
                [v for r in part for v in r],
            )
        )
    t0 = time.perf_counter()
    for stmt in statements:
        cur.execute(stmt)
    conn.commit()
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def events(rows: list[tuple], lsn: int) -> list[ChangeEvent]:
    """The changes as the source hands them to the sink (built before the clock starts: decoding is the
    source's work, measured by bench/run.py)."""
    ts = int(time.time() * 1000)
    return [
        ChangeEvent(
            "u",
            "public",
            "item_price",
            None,
            {"sku": sku, "price": price, "name": name},
            lsn,
            lsn,
            seq,
            ts,
            1,
            toast=False,  # as the source says of an Update without unchanged TOAST values
        )
        for seq, (sku, price, name) in enumerate(rows, 1)
    ]


def poscdc(sink: SqlSink, changes: list[ChangeEvent]) -> float:
    t0 = time.perf_counter()
    for ev in changes:
        sink.add(ev)
        if len(sink.buffer) >= sink.scfg.batch_size:
            sink.write_async()  # as the pipeline does: the next batch is built while this one is written
    lsn = changes[-1].commit_lsn
    sink.commit({"wal": json.dumps({"commit_lsn": lsn, "end_lsn": lsn})}, floor=lsn)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed reprices of each side (medians reported)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    tune_gc()  # as `cdc run` does
    n = args.rows
    load = [(f"SKU-{i:07d}", Decimal(i % 9999 + 100) / 100, f"item {i}") for i in range(n)]
    t_native, t_cdc = [], []
    with LocalMariaDB() as server, tempfile.TemporaryDirectory() as tmp:
        server.create_database("bench")
        server.execute(DDL.format(t="native_price"), "bench")
        server.execute(DDL.format(t="product_price"), "bench")
        cfg_path = Path(tmp) / "bench.yaml"
        cfg_path.write_text(
            "name: bench\nsource: {type: postgres, dsn: unused, tables: [public.item_price]}\n"
            f"sink: {{type: sql, url: '{server.url('bench')}', table: product_price, key: [sku]}}\n"
        )
        sink = SqlSink(load_config(cfg_path))
        sink.open()
        sink.set_floor(
            0
        )  # as the pipeline does: the stored position lets fresh changes skip the stale lookup
        native(server, load)
        poscdc(sink, events(load, 1))
        # the machine's other load comes and goes: the two sides take turns, and medians are compared
        for r in range(1, args.rounds + 1):
            reprice = [(sku, price + Decimal(r) / 100, name) for sku, price, name in load]
            t_native.append(native(server, reprice))
            t_cdc.append(poscdc(sink, events(reprice, 1 + r)))
        sink.close()
        same = server.execute("SELECT count(*), sum(price) FROM product_price", "bench") == server.execute(
            "SELECT count(*), sum(price) FROM native_price", "bench"
        )
    med_native, med_cdc = statistics.median(t_native), statistics.median(t_cdc)
    figures = {
        "rows": n,
        "rounds": args.rounds,
        "native_rows_per_s": round(n / med_native),
        "poscdc_rows_per_s": round(n / med_cdc),
        "ratio": round(med_native / med_cdc, 3),
        "ratios_per_round": [round(a / b, 3) for a, b in zip(t_native, t_cdc, strict=True)],
        "same_result": same,
        "target_ratio": 0.5,
    }
    print(f"MariaDB bulk reprice of {n} rows (update pass), one transaction each, median of {args.rounds}:")
    print(f"  native INSERT … ON DUPLICATE KEY UPDATE: {figures['native_rows_per_s']:>9,} rows/s")
    print(f"  pos-cdc sql sink:                        {figures['poscdc_rows_per_s']:>9,} rows/s")
    print(
        f"  ratio pos-cdc / native: {figures['ratio']} (target >= 0.5; per round {figures['ratios_per_round']});"
        f" same result: {same}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
