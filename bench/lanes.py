#!/usr/bin/env python
"""Priority lanes: promotion prices during a bulk reprice, with lanes and without, in ONE run.

    python bench/lanes.py [--rows 1000000] [--modes direct,kafka] [--json out.json]

For each mode and for lanes on and off, on fresh databases of one throwaway PostgreSQL cluster (and one local
Kafka broker for the Kafka mode): a POS table of N regular rows and 200 promotion rows (category 'promo'),
the storefront filled alike, the connectors run as deployed (`python -m cdc.cli run` subprocesses, snapshot
never). Then ONE transaction reprices the N regular rows while a promotion row's price changes once a second
(marker: a new price, its commit time noted); a poller reads the storefront every 5 ms. The figure is each
marker's commit-to-visible time, for the markers committed after the reprice committed and before the
storefront had all of it — the window in which a promotion would queue behind the bulk.

* direct, lanes:    source.lanes [{priority: category = 'promo'}, {bulk}] -> storefront (two slots)
* direct, no lanes: one connector
* kafka, lanes:     source.lanes -> Kafka, a topic per lane; a sink connector per lane (one position_group)
* kafka, no lanes:  one POS -> Kafka connector, one Kafka -> storefront connector

Target (issue 12): with lanes, p99 <= 500 ms in both modes, on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psycopg  # noqa: E402
from kafka_e2e import Connector, wait  # noqa: E402  (bench/kafka_e2e.py)

from cdc.localkafka import LocalKafka  # noqa: E402
from cdc.localpg import LocalPostgres  # noqa: E402

MARKERS = 200
STAGES = """
transforms:
  - {{type: rename, fields: {{item_code: sku, price_fen: price}}}}
  - {{type: money, field: price, divide_by: 100, scale: 2}}
  - {{type: drop, fields: [category]}}
sink: {{type: sql, url: "{store}", table: product_price, key: [sku]{group}}}
"""
LANES = """  lanes:
    - {name: priority, where: "category = 'promo'"}
    - {name: bulk}
"""
SOURCE = """name: {name}
source:
  type: postgres
  dsn: "{pos}"
  tables: [public.item_price]
  snapshot: never
  heartbeat_interval_s: 0
{lanes}"""
K2S = """name: {name}
source: {{type: kafka, bootstrap_servers: "{kafka}", topics: [{topic}], group: {name}}}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--modes", default="direct,kafka")
    ap.add_argument("--lanes-only", action="store_true", help="skip the runs without lanes")
    ap.add_argument(
        "--one-process",
        dest="split",
        action="store_false",
        help="run a config's lanes in one `cdc run` process (default: a process per lane, `--lane`)",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="pos-cdc-lanes-bench-"))
    modes = args.modes.split(",")
    figures: dict = {"rows": args.rows}
    with LocalPostgres(settings={"autovacuum": "off", "max_replication_slots": "20"}) as pg:
        kafka = LocalKafka() if "kafka" in modes else None
        try:
            if kafka is not None:
                kafka.__enter__()
            for mode in modes:
                for lanes in (True,) if args.lanes_only else (True, False):
                    key = f"{mode}_{'lanes' if lanes else 'no_lanes'}"
                    figures[key] = run_phase(pg, kafka, mode, lanes, args.rows, logs / key, args.split)
                    report(key, figures[key])
        finally:
            if kafka is not None:
                kafka.__exit__(None, None, None)
    print(
        f"\npromotion price changes during a {args.rows:,}-row bulk reprice (commit -> visible in the storefront):"
    )
    for key, f in figures.items():
        if isinstance(f, dict):
            print(
                f"  {key:18s} markers {f['markers']:3d}  p50 {f['p50_ms']:>8,.0f} ms  p99 {f['p99_ms']:>8,.0f} ms"
                f"  max {f['max_ms']:>8,.0f} ms   (bulk applied in {f['bulk_s']:.1f} s)"
            )
    print("  target: with lanes, p99 <= 500 ms in both modes")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


def run_phase(pg: LocalPostgres, kafka, mode: str, lanes: bool, n: int, logs: Path, split: bool) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    pos, store = pg.create_database(f"pos_{tag}"), pg.create_database(f"store_{tag}")
    store_url = pg.url(f"store_{tag}")
    fill(pg, f"pos_{tag}", f"store_{tag}", n)
    procs: list[Connector] = []
    try:
        for i, body in enumerate(configs(mode, lanes, tag, pos, store_url, kafka)):
            path = logs / f"c{i}.yaml"
            path.write_text(body)
            if "lanes:" in body and split:  # a process per lane, as deployed for priority (cdc@... --lane)
                for lane in ("priority", "bulk"):
                    procs.append(Connector(path, logs / f"c{i}-{lane}.log", ("--lane", lane)))
            else:
                procs.append(Connector(path, logs / f"c{i}.log"))
        marker = Markers(pos, store)
        marker.warm_up(procs)  # every connector streams (and, over Kafka, every group has joined)
        marker.start()
        time.sleep(2)
        with psycopg.connect(pos) as c:  # the bulk reprice: one transaction
            c.execute("UPDATE item_price SET price_fen = price_fen + 1 WHERE category = 'regular'")
            want = (
                Decimal(
                    c.execute("SELECT sum(price_fen) FROM item_price WHERE category = 'regular'").fetchone()[
                        0
                    ]
                )
                / 100
            )
            c.commit()
            t_bulk = time.monotonic()
        total = _query(store, "SELECT coalesce(sum(price), 0) FROM product_price WHERE sku LIKE 'SKU-%'")
        t_done = wait(lambda: total() == want, "the reprice in the storefront", procs, 1800, 0.2)
        time.sleep(2)
        marker.stop()
        lat = [ms for committed, ms in marker.latencies if t_bulk <= committed <= t_done]
        if not lat:
            raise SystemExit("no marker committed while the bulk was applied: use more --rows")
        lat.sort()
        return {
            "markers": len(lat),
            "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1),
            "max_ms": round(lat[-1], 1),
            "bulk_s": round(t_done - t_bulk, 2),
            "latencies_ms": [round(ms) for ms in sorted_by_commit(marker.latencies, t_bulk, t_done)],
        }
    finally:
        for p in procs:
            p.stop()


def sorted_by_commit(latencies: list, start: float, end: float) -> list[float]:
    """The markers' latencies in the order they were committed (to see which were slow)."""
    return [ms for committed, ms in sorted(latencies) if start <= committed <= end]


def fill(pg: LocalPostgres, pos_db: str, store_db: str, n: int) -> None:
    pg.execute(
        "CREATE TABLE item_price (item_code text PRIMARY KEY, category text NOT NULL, price_fen bigint NOT NULL);"
        " ALTER TABLE item_price REPLICA IDENTITY FULL;"
        f" INSERT INTO item_price SELECT 'SKU-' || lpad(i::text, 8, '0'), 'regular', 1000 + i % 9000"
        f" FROM generate_series(1, {n}) i;"
        f" INSERT INTO item_price SELECT 'PROMO-' || lpad(i::text, 4, '0'), 'promo', 500"
        f" FROM generate_series(1, {MARKERS}) i",
        pos_db,
    )
    pg.execute(
        "CREATE TABLE product_price (sku text PRIMARY KEY, price numeric(12,2));"
        f" INSERT INTO product_price SELECT 'SKU-' || lpad(i::text, 8, '0'), (1000 + i % 9000) / 100.0"
        f" FROM generate_series(1, {n}) i;"
        f" INSERT INTO product_price SELECT 'PROMO-' || lpad(i::text, 4, '0'), 5.00 FROM generate_series(1, {MARKERS}) i",
        store_db,
    )


def configs(mode: str, lanes: bool, tag: str, pos: str, store_url: str, kafka) -> list[str]:
    lane_block = LANES if lanes else ""
    if mode == "direct":
        return [
            SOURCE.format(name=f"d{tag}", pos=pos, lanes=lane_block)
            + STAGES.format(store=store_url, group="")
        ]
    prefix = f"b{tag}"
    sink = f'sink: {{type: kafka, bootstrap_servers: "{kafka.bootstrap}", topic_prefix: {prefix}, partitions: 3}}\n'
    out = [SOURCE.format(name=f"p{tag}", pos=pos, lanes=lane_block) + sink]
    topic = f"{prefix}.public.item_price"
    group = f", position_group: g{tag}"
    for lane in ("priority", "bulk") if lanes else (None,):
        name = f"k{tag}{lane or ''}"
        out.append(
            K2S.format(name=name, kafka=kafka.bootstrap, topic=f"{topic}.{lane}" if lane else topic)
            + STAGES.format(store=store_url, group=group if lane else "")
        )
    return out


class Markers(threading.Thread):
    """Once a second a promotion row gets a new price; a poller notes when the storefront shows it."""

    def __init__(self, pos: str, store: str):
        super().__init__(daemon=True)
        self.pos, self.store = pos, store
        self.latencies: list[tuple[float, float]] = []  # (commit time, ms to visible)
        self.pending: dict[str, tuple[Decimal, float]] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.poller = threading.Thread(target=self._poll, daemon=True)
        self.i = 0

    def _set(self, conn) -> tuple[str, Decimal]:
        self.i += 1
        sku = f"PROMO-{(self.i - 1) % MARKERS + 1:04d}"
        price_fen = 500 + self.i
        conn.execute("UPDATE item_price SET price_fen = %s WHERE item_code = %s", (price_fen, sku))
        return sku, Decimal(price_fen) / 100

    def warm_up(self, procs) -> None:
        """Changes a promotion row every 2 s until the storefront shows the last change (the connectors may
        make their slots after the first ones)."""
        with (
            psycopg.connect(self.pos, autocommit=True) as c,
            psycopg.connect(self.store, autocommit=True) as s,
        ):
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                sku, price = self._set(c)
                q = "SELECT price FROM product_price WHERE sku = %s"
                try:
                    wait(
                        lambda q=q, k=sku, p=price: s.execute(q, (k,)).fetchone()[0] == p, "warm-up", procs, 2
                    )
                    return
                except SystemExit:
                    continue
        raise SystemExit("the connectors never streamed a first promotion change")

    def run(self) -> None:
        self.poller.start()
        with psycopg.connect(self.pos, autocommit=True) as c:
            while not self.halt.is_set():
                sku, price = self._set(c)
                with self.lock:
                    self.pending[sku] = (price, time.monotonic())
                self.halt.wait(1.0)
        self.poller.join()

    def _poll(self) -> None:
        with psycopg.connect(self.store, autocommit=True) as s:
            while not self.halt.is_set() or self.pending:
                with self.lock:
                    waiting = dict(self.pending)
                if waiting:
                    got = dict(
                        s.execute(
                            "SELECT sku, price FROM product_price WHERE sku = ANY(%s)", (list(waiting),)
                        )
                    )
                    now = time.monotonic()
                    with self.lock:
                        for sku, (price, t) in waiting.items():
                            if got.get(sku) == price:
                                self.latencies.append((t, (now - t) * 1000))
                                self.pending.pop(sku, None)
                time.sleep(0.005)

    def stop(self) -> None:
        self.halt.set()
        self.join(600)


def _query(dsn: str, sql: str):
    conn = psycopg.connect(dsn, autocommit=True)
    return lambda: conn.execute(sql).fetchone()[0]


def report(key: str, f: dict) -> None:
    print(f"{key}: {json.dumps(f)}", flush=True)


if __name__ == "__main__":
    main()
