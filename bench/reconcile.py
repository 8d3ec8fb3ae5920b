#!/usr/bin/env python
"""`cdc reconcile` against reladiff (PyPI), measured in ONE run on the same machine.

    python bench/reconcile.py [--rows 1000000] [--drift 0.01] [--json out.json] [--skip-reladiff]

    needs: pip install reladiff psycopg2-binary   (reladiff's PostgreSQL driver is psycopg2)

Two throwaway clusters (cdc.localpg.LocalPostgres), as bench/run.py: a POS cluster with `item_price`
(item_code text PK, store_id, channel, price_fen bigint, updated_at timestamptz; N rows), and a storefront
cluster with two databases that the real connector fills (its initial snapshot, in this process, before
any clock runs; it is stopped before the measurements, so every reconcile finds it stopped and settled):

* identity — no stages, into a table of the POS table's shape (the case reladiff compares too);
* money    — rename (item_code -> sku, price_fen -> price) + money (fen -> numeric(12,2) yuan), into
             product_price(sku, store_id, channel, price, updated_at).

Each measurement is a child process of its own (a fresh interpreter, as `cdc reconcile` is), which reports
its wall time and its peak RSS (VmHWM):

1. identity, in sync: `reconcile(cfg)` — rows/s = POS rows / wall time; target >= 200k rows/s, RSS <= 200 MB;
2. reladiff on the same two tables (all columns; HashDiffer with its defaults, threaded): rows/s, RSS;
3. money, in sync: what rename + money costs (compared row by row in Python);
4. identity with `--drift` of the storefront rows changed behind the connector's back (price_fen + 1, random
   rows): reladiff finding them, then `reconcile(cfg, repair=True)` (its phases: compare, sort out + repair)
   and a last `reconcile(cfg)` that must find the tables in sync.

Figures go to stdout (and --json). Everything is cleaned up on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from cdc.localpg import LocalPostgres  # noqa: E402

POS_TABLE = """
CREATE TABLE item_price (
  item_code  text PRIMARY KEY,
  store_id   int NOT NULL DEFAULT 0,
  channel    text NOT NULL DEFAULT 'ONLINE',
  price_fen  bigint NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
)"""
MONEY_TABLE = """
CREATE TABLE product_price (
  sku        text PRIMARY KEY,
  store_id   int,
  channel    text,
  price      numeric(12,2),
  updated_at timestamptz
)"""
IDENTITY = """
name: bench_identity
source: {{type: postgres, dsn: "{pos}", tables: [public.item_price], heartbeat_interval_s: 0}}
sink: {{type: sql, url: "{store}", table: item_price, key: [item_code]}}
"""
MONEY = """
name: bench_money
source: {{type: postgres, dsn: "{pos}", tables: [public.item_price], heartbeat_interval_s: 0}}
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
sink: {{type: sql, url: "{store}", table: product_price, key: [sku]}}
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# --- the measured children ------------------------------------------------------------------------------


def child_reconcile(config: str, repair: bool) -> dict:
    import logging

    from cdc.config import load_config
    from cdc.ops.reconcile import reconcile

    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(config)
    t0 = time.perf_counter()
    if os.environ.get("BENCH_PROFILE"):
        import cProfile
        import pstats

        prof = cProfile.Profile()
        report = prof.runcall(reconcile, cfg, repair=repair, progress=lambda done, total: None)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    else:
        report = reconcile(cfg, repair=repair, progress=lambda done, total: None)
    took = time.perf_counter() - t0
    d = report.as_dict()
    return {
        "seconds": took,
        "rss": peak_rss(),
        "exit_code": report.exit_code,
        "reason": report.reason,
        "counts": d["counts"],
        "repaired": d["repaired"],
        "compared": d["compared"],
        "method": report.method,
        "buckets": d["buckets"],
        "phases": report.phases,
    }


def child_reladiff(pos_url: str, store_url: str, table: str, key: str, columns: list[str]) -> dict:
    import reladiff

    t0 = time.perf_counter()
    t1 = reladiff.connect_to_table(pos_url, table, key, thread_count=2)
    t2 = reladiff.connect_to_table(store_url, table, key, thread_count=2)
    diff = list(
        reladiff.diff_tables(t1, t2, extra_columns=tuple(columns), threaded=True, max_threadpool_size=2)
    )
    took = time.perf_counter() - t0
    keys = {row[1][0] for row in diff}
    return {"seconds": took, "rss": peak_rss(), "diff_rows": len(diff), "diff_keys": len(keys)}


def run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    if os.environ.get("BENCH_PROFILE"):
        print(proc.stderr[-8000:], file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- setup ------------------------------------------------------------------------------------------------


def q(dsn: str, sql: str, params=None):
    with psycopg.connect(dsn, autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchall() if cur.description else cur.rowcount


def fill(config_path: Path, store_dsn: str, table: str, rows: int) -> float:
    """Runs the connector (its initial snapshot) until the storefront table has `rows` rows, then stops it
    and folds its recorded key positions into cdc_row_state, as a connector left running does while caught up
    (so the measurements do not pay for the snapshot's backlog: see the README's figures for what it costs)."""
    import sqlalchemy as sa

    from cdc.config import load_config
    from cdc.pipeline import Pipeline
    from cdc.sinks.sql.bookkeeping import fold

    cfg = load_config(config_path)
    pipeline = Pipeline(cfg)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    while True:
        if errors:
            raise errors[0]
        try:
            n = q(store_dsn, f"SELECT count(*) FROM {table}")[0][0]
        except psycopg.errors.UndefinedTable:
            n = 0
        if n >= rows:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # the snapshot's end and a checkpoint
    pipeline.stop()
    th.join(120)
    engine = sa.create_engine(cfg.sink.url)
    with engine.begin() as conn:
        fold(conn, cfg.name)
    engine.dispose()
    return time.monotonic() - t0


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s"


def mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--drift", type=float, default=0.01)
    ap.add_argument("--json")
    ap.add_argument("--skip-reladiff", action="store_true")
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "reconcile":
            out = child_reconcile(rest[0], rest[1:] == ["repair"])
        else:
            out = child_reladiff(rest[0], rest[1], rest[2], rest[3], rest[4].split(","))
        print(json.dumps(out))
        return 0

    work = Path(tempfile.mkdtemp(prefix="pos-cdc-bench-reconcile-"))
    os.chmod(work, 0o755)  # the clusters run as an unprivileged user
    pos = LocalPostgres(base_dir=str(work / "pos"), settings={"autovacuum": "off"})
    store = LocalPostgres(base_dir=str(work / "store"), settings={"autovacuum": "off"})
    (work / "pos").mkdir()
    (work / "store").mkdir()
    results: dict = {"rows": args.rows, "drift": args.drift, "cpus": os.cpu_count()}
    try:
        pos.start()
        store.start()
        pos_dsn = pos.create_database("pos")
        ident_dsn = store.create_database("store_identity")
        money_dsn = store.create_database("store_money")
        n = args.rows
        log(f"loading {n:,} POS rows")
        q(pos_dsn, POS_TABLE)
        q(
            pos_dsn,
            "INSERT INTO item_price (item_code, store_id, price_fen, updated_at) SELECT 'SKU' || lpad(i::text, 7, '0'),"
            " i %% 50, (i::bigint * 7919 %% 99900 + 100), '2026-12-01 08:00:00+00'::timestamptz + i * interval '1 s'"
            " FROM generate_series(1, %s) i",
            (n,),
        )
        q(pos_dsn, "VACUUM ANALYZE item_price")
        q(ident_dsn, POS_TABLE)
        q(money_dsn, MONEY_TABLE)
        ident_cfg, money_cfg = work / "identity.yaml", work / "money.yaml"
        ident_cfg.write_text(IDENTITY.format(pos=pos_dsn, store=store.url("store_identity")))
        money_cfg.write_text(MONEY.format(pos=pos_dsn, store=store.url("store_money")))
        for name, cfg, dsn, table in (
            ("identity", ident_cfg, ident_dsn, "item_price"),
            ("money", money_cfg, money_dsn, "product_price"),
        ):
            took = fill(cfg, dsn, table, n)
            q(dsn, "VACUUM ANALYZE")  # the storefront and its bookkeeping, as autovacuum (off here) would
            log(f"storefront {name} filled by the connector's snapshot in {took:.0f}s")
        pos_url = f"postgresql://postgres@127.0.0.1:{pos.port}/pos"
        ident_url = f"postgresql://postgres@127.0.0.1:{store.port}/store_identity"
        cols = "store_id,channel,price_fen,updated_at"

        log("1. reconcile, identity stages, in sync")
        a = results["reconcile_identity"] = run_child("reconcile", str(ident_cfg))
        assert a["exit_code"] == 0, a
        log(
            f"   {a['seconds']:.2f}s = {rate(n, a['seconds'])}, peak RSS {mb(a['rss'])} ({a['method']}, {a['phases']})"
        )
        if not args.skip_reladiff:
            log("2. reladiff, same tables")
            b = results["reladiff_identity"] = run_child(
                "reladiff", pos_url, ident_url, "item_price", "item_code", cols
            )
            assert b["diff_rows"] == 0, b
            log(f"   {b['seconds']:.2f}s = {rate(n, b['seconds'])}, peak RSS {mb(b['rss'])}")
            log(f"   pos-cdc / reladiff speed: {b['seconds'] / a['seconds']:.2f}")
        log("3. reconcile, rename + money stages, in sync")
        c = results["reconcile_money"] = run_child("reconcile", str(money_cfg))
        assert c["exit_code"] == 0, c
        log(f"   {c['seconds']:.2f}s = {rate(n, c['seconds'])}, peak RSS {mb(c['rss'])} ({c['method']})")

        changed = int(n * args.drift)
        log(f"4. {changed:,} storefront rows changed behind the connector's back ({args.drift:.1%})")
        q(
            ident_dsn,
            "UPDATE item_price SET price_fen = price_fen + 1 WHERE item_code IN"
            " (SELECT item_code FROM item_price ORDER BY md5(item_code) LIMIT %s)",
            (changed,),
        )
        q(ident_dsn, "VACUUM ANALYZE item_price")
        if not args.skip_reladiff:
            d = results["reladiff_drift"] = run_child(
                "reladiff", pos_url, ident_url, "item_price", "item_code", cols
            )
            log(f"   reladiff found {d['diff_keys']:,} keys in {d['seconds']:.2f}s, peak RSS {mb(d['rss'])}")
        e = results["reconcile_repair"] = run_child("reconcile", str(ident_cfg), "repair")
        assert e["counts"]["different"] == changed and e["exit_code"] == 0, e
        ph = e["phases"]
        log(
            f"   reconcile --repair: {e['seconds']:.2f}s ({e['repaired']['upserted']:,} repaired; compare "
            f"{ph['compare_s']:.2f}s of which {ph['resolve_s']:.2f}s sorting out + repairing the keys found, "
            f"{e['buckets']['differing']:,}/{e['buckets']['total']:,} buckets differing), peak RSS {mb(e['rss'])}"
        )
        f = results["reconcile_after_repair"] = run_child("reconcile", str(ident_cfg))
        assert f["exit_code"] == 0 and sum(f["counts"].values()) == 0, f
        log(f"   then in sync again: {f['seconds']:.2f}s")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        return 0
    finally:
        pos.destroy()
        store.destroy()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
