"""MariaDB sink benchmark: pos-cdc's `sql` sink vs MariaDB's own multi-row INSERT … ON DUPLICATE KEY UPDATE.

Same server, same table shape, same 200k-row bulk reprice, in one run:
  native:    pymysql, multi-row INSERT … ON DUPLICATE KEY UPDATE in chunks of 1000 rows, one transaction
             (statements built before the clock: the server's rate)
  fast:      the fast path (cdc/fast/), as the pipeline runs it: the reprice's pgoutput messages, as a throwaway
             PostgreSQL cluster sent them through a logical slot (captured before the clock), in ChangeBatches
             of pg_stream's run size, through FastPath.push (encoding from the message bytes is timed),
             write_async() every batch_size changes and one commit, recording each key's position
  reference: the reference path (CDC_FAST_PATH=0): 200k update ChangeEvents (built beforehand, as the source
             delivers them: decoding not timed) through SqlSink.add(), write_async() every batch_size changes
             and one commit, recording each key's position (cdc_applied) as always
Each side first loads the rows (insert pass), then reprices all of them (update pass, what is timed); the three
take turns, each round, into a table of their own, and the tables must come out the same.

    python bench/mariadb_sink.py [--rows 200000] [--rounds 3] [--native-chunk 1000]
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

from cdc.cli import tune_gc, tune_threads
from cdc.config import load_config
from cdc.events import ChangeBatch, ChangeEvent
from cdc.fast import FastPath
from cdc.localmariadb import LocalMariaDB
from cdc.localpg import LocalPostgres
from cdc.sinks.sql import SqlSink
from cdc.sources import pgoutput as po
from cdc.sources.pg_stream import RUN_MAX, WalStream

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


def captured(n: int, rounds: int) -> tuple[po.Relation, list[list[tuple]]]:
    """The load and `rounds` reprices as PostgreSQL's pgoutput sends them, from a throwaway cluster through a
    logical slot: the table's Relation and, per transaction, its (commit lsn, commit time, xid, Insert/Update
    message bytes, their lsns). The values are main()'s: SKU-0000000.., (i % 9999 + 100) / 100, 'item i';
    each reprice adds 0.01."""
    import psycopg

    with LocalPostgres() as pg:
        dsn = pg.create_database("pos")
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(
                "CREATE TABLE item_price (sku text PRIMARY KEY, price numeric(12,2) NOT NULL, name text)"
            )
            c.execute("CREATE PUBLICATION bench FOR TABLE item_price")
            c.execute("SELECT pg_create_logical_replication_slot('bench', 'pgoutput')")
            c.execute(
                "INSERT INTO item_price SELECT 'SKU-' || lpad(g::text, 7, '0'), (g %% 9999 + 100) / 100.0,"
                " 'item ' || g FROM generate_series(0, %s) g",
                (n - 1,),
            )
            for _ in range(rounds):
                c.execute("UPDATE item_price SET price = price + 0.01")
            dec, rel, txns = po.Decoder(), None, []
            payloads: list[bytes] = []
            lsns: list[int] = []
            for lsn, data in c.execute(
                "SELECT (lsn - '0/0'::pg_lsn)::bigint, data FROM pg_logical_slot_get_binary_changes('bench',"
                " NULL, NULL, 'proto_version', '1', 'publication_names', 'bench')"
            ):
                tag = data[:1]
                if tag in (b"I", b"U"):
                    payloads.append(data)
                    lsns.append(lsn)
                    continue
                msg = dec.decode(data)
                if type(msg) is po.Relation:
                    rel = msg
                elif type(msg) is po.Begin:
                    payloads, lsns = [], []
                    txns.append(
                        (msg.final_lsn, po.pg_epoch_us_to_unix_ms(msg.commit_ts_us), msg.xid, payloads, lsns)
                    )
    return rel, txns


def batches(stream: WalStream, rel: po.Relation, txn: tuple) -> list[ChangeBatch]:
    """A transaction's changes in runs of RUN_MAX, as pg_stream yields them."""
    commit_lsn, ts_ms, xid, payloads, lsns = txn
    return [
        stream._batch(rel, payloads[i : i + RUN_MAX], lsns[i : i + RUN_MAX], 0, commit_lsn, ts_ms, xid)
        for i in range(0, len(payloads), RUN_MAX)
    ]


def fast(sink: SqlSink, path: FastPath, run: list[ChangeBatch]) -> float:
    """The pipeline's loop over a transaction's batches (pipeline._consume, StageRunner.push_batch)."""
    t0 = time.perf_counter()
    n_buffered, batch_size = 0, sink.scfg.batch_size
    for batch in run:
        path.push(batch, sink.add)  # (no stages: a change left to the reference path goes to the sink as is)
        n_buffered += len(batch)
        if n_buffered >= batch_size:
            sink.write_async()
            n_buffered = 0
    lsn = run[-1].commit_lsn
    sink.commit({"wal": json.dumps({"commit_lsn": lsn, "end_lsn": lsn})}, floor=lsn)
    return time.perf_counter() - t0


def poscdc(sink: SqlSink, changes: list[ChangeEvent]) -> float:
    t0 = time.perf_counter()
    for ev in changes:
        sink.add(ev)
        if len(sink.buffer) >= sink.scfg.batch_size:
            sink.write_async()  # as the pipeline does: the next batch is built while this one is written
    lsn = changes[-1].commit_lsn
    sink.commit({"wal": json.dumps({"commit_lsn": lsn, "end_lsn": lsn})}, floor=lsn)
    return time.perf_counter() - t0


def sink_for(server: LocalMariaDB, tmp: str, name: str, table: str) -> SqlSink:
    cfg_path = Path(tmp) / f"{name}.yaml"
    cfg_path.write_text(
        f"name: {name}\nsource: {{type: postgres, dsn: unused, tables: [public.item_price]}}\n"
        f"sink: {{type: sql, url: '{server.url('bench')}', table: {table}, key: [sku]}}\n"
    )
    sink = SqlSink(load_config(cfg_path))
    sink.open()
    sink.set_floor(0)  # as the pipeline does: the stored position lets fresh changes skip the stale lookup
    return sink


SAME = "SELECT count(*), sum(price), bit_xor(crc32(concat_ws('|', sku, price, name))) FROM {t}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed reprices of each side (medians reported)")
    ap.add_argument(
        "--native-chunk",
        type=int,
        default=1000,
        help="rows a native statement (the fast path cuts its statements at 1 MB: ~30k of these rows)",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    tune_gc()  # as `cdc run` does
    tune_threads()
    n = args.rows
    load = [(f"SKU-{i:07d}", Decimal(i % 9999 + 100) / 100, f"item {i}") for i in range(n)]
    rel, txns = captured(n, args.rounds)
    t_native, t_fast, t_ref = [], [], []
    with LocalMariaDB() as server, tempfile.TemporaryDirectory() as tmp:
        server.create_database("bench")
        for t in ("native_price", "product_price", "fast_price"):
            server.execute(DDL.format(t=t), "bench")
        ref_sink = sink_for(server, tmp, "bench", "product_price")
        fast_sink = sink_for(server, tmp, "bench_fast", "fast_price")
        form, why = fast_sink.fast_form()
        if form is None:
            raise SystemExit(f"no fast path: {why}")
        path = FastPath([], fast_sink, form=form)
        stream = WalStream(fast_sink.cfg, "pos")
        native(server, load, args.native_chunk)
        poscdc(ref_sink, events(load, 1))
        fast(fast_sink, path, batches(stream, rel, txns[0]))
        # the machine's other load comes and goes: the sides take turns, and medians are compared
        for r in range(1, args.rounds + 1):
            reprice = [(sku, price + Decimal(r) / 100, name) for sku, price, name in load]
            run = batches(stream, rel, txns[r])
            t_native.append(native(server, reprice, args.native_chunk))
            t_fast.append(fast(fast_sink, path, run))
            t_ref.append(poscdc(ref_sink, events(reprice, 1 + r)))
        encoded = path.encoded
        ref_sink.close()
        fast_sink.close()
        want = server.execute(SAME.format(t="native_price"), "bench")
        same_fast = server.execute(SAME.format(t="fast_price"), "bench") == want
        same_ref = server.execute(SAME.format(t="product_price"), "bench") == want
    med_native, med_fast, med_ref = map(statistics.median, (t_native, t_fast, t_ref))
    figures = {
        "rows": n,
        "rounds": args.rounds,
        "native_chunk": args.native_chunk,
        "native_rows_per_s": round(n / med_native),
        "fast_rows_per_s": round(n / med_fast),
        "reference_rows_per_s": round(n / med_ref),
        "fast_ratio": round(med_native / med_fast, 3),
        "reference_ratio": round(med_native / med_ref, 3),
        "fast_ratios_per_round": [round(a / b, 3) for a, b in zip(t_native, t_fast, strict=True)],
        "reference_ratios_per_round": [round(a / b, 3) for a, b in zip(t_native, t_ref, strict=True)],
        "fast_encoded": encoded,
        "same_result": same_fast and same_ref,
        "target_ratio": 0.8,
    }
    print(f"MariaDB bulk reprice of {n} rows (update pass), one transaction each, median of {args.rounds}:")
    print(
        f"  native INSERT … ON DUPLICATE KEY UPDATE: {figures['native_rows_per_s']:>9,} rows/s"
        f" ({args.native_chunk} rows a statement)"
    )
    print(f"  pos-cdc fast path (from pgoutput bytes): {figures['fast_rows_per_s']:>9,} rows/s")
    print(f"  pos-cdc reference path (from events):    {figures['reference_rows_per_s']:>9,} rows/s")
    print(
        f"  ratio fast / native: {figures['fast_ratio']} (target >= 0.8; per round"
        f" {figures['fast_ratios_per_round']}); reference / native: {figures['reference_ratio']}"
        f" (per round {figures['reference_ratios_per_round']})"
    )
    print(
        f"  changes the fast path encoded: {encoded:,}; same rows as native: fast {same_fast}, reference {same_ref}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    os.sys.stdout.flush()


if __name__ == "__main__":
    main()
