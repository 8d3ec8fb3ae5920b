"""`cdc demo`: a local POS PostgreSQL and storefront, simulated price changes, and live sync and lag.

Everything is made in a temp dir and removed on exit (Ctrl-C included). The connector is the example a DBA
copies, connectors/pos-to-storefront.yaml (an embedded copy is used when the repo is not at hand).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import psycopg
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cdc.config import load_config
from cdc.localpg import LocalPostgres
from cdc.metrics import Metrics
from cdc.pipeline import Pipeline

POS_SCHEMA = """
CREATE TABLE item_price (
    item_code  text        NOT NULL,
    store_id   int         NOT NULL,
    channel    text        NOT NULL,
    price_fen  bigint      NOT NULL,
    cost_fen   bigint,
    updated_by text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_code, store_id, channel)
);
"""
STORE_SCHEMA = """
CREATE TABLE product_price (
    sku        text PRIMARY KEY,
    price      numeric(12,2) NOT NULL,
    updated_at timestamptz,
    deleted_at timestamptz
);
"""
N_ITEMS = 200
CASHIERS = ["alice", "bo", "chen", "dana"]


def example_config() -> Path:
    repo = Path(__file__).resolve().parent.parent / "connectors" / "pos-to-storefront.yaml"
    if repo.exists():
        return repo
    return Path(str(resources.files("cdc") / "pos-to-storefront.yaml"))


def seed(pos_dsn: str, store_dsn: str) -> None:
    with psycopg.connect(pos_dsn, autocommit=True) as c:
        c.execute(POS_SCHEMA)
        rows = []
        for i in range(N_ITEMS):
            base = random.randint(100, 99_900)
            for store, channel in ((0, "ONLINE"), (1, "STORE"), (2, "STORE")):
                rows.append((f"SKU-{i:05d}", store, channel, base, base * 6 // 10, "seed"))
        with c.cursor() as cur:
            cur.executemany(
                "INSERT INTO item_price (item_code, store_id, channel, price_fen, cost_fen, updated_by)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
    with psycopg.connect(store_dsn, autocommit=True) as c:
        c.execute(STORE_SCHEMA)


def simulate(pos_dsn: str, rate: float, stop: threading.Event, counter: list[int]) -> None:
    """Cashier-style price changes: mostly single-row reprices, now and then a promotion touching many."""
    with psycopg.connect(pos_dsn, autocommit=True) as c:
        while not stop.is_set():
            if random.random() < 0.02:
                pct = random.choice([80, 90, 95])
                n = c.execute(
                    "UPDATE item_price SET price_fen = price_fen * %s / 100, updated_by = 'promo',"
                    " updated_at = now() WHERE channel = 'ONLINE' AND item_code LIKE %s",
                    (pct, f"SKU-000{random.randint(0, 9)}%"),
                ).rowcount
            else:
                n = c.execute(
                    "UPDATE item_price SET price_fen = %s, updated_by = %s, updated_at = now()"
                    " WHERE item_code = %s AND channel = %s",
                    (
                        random.randint(100, 99_900),
                        random.choice(CASHIERS),
                        f"SKU-{random.randrange(N_ITEMS):05d}",
                        random.choice(["ONLINE", "STORE"]),
                    ),
                ).rowcount
            counter[0] += n
            stop.wait(1 / rate)


def snapshot_view(pos_dsn: str, store_dsn: str, metrics: Metrics, name: str, made: int) -> Table:
    with psycopg.connect(pos_dsn) as c:
        pos = dict(
            c.execute("SELECT item_code, price_fen FROM item_price WHERE channel='ONLINE' AND store_id=0")
        )
    with psycopg.connect(store_dsn) as c:
        store = dict(c.execute("SELECT sku, price FROM product_price WHERE deleted_at IS NULL"))
    in_sync = sum(1 for k, v in pos.items() if k in store and store[k] * 100 == v)
    lag = metrics.end_to_end_lag.labels(name)._value.get()
    table = Table(title="pos-cdc demo: POS (fen) -> storefront (yuan)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("POS rows changed", str(made))
    table.add_row("online SKUs in sync", f"{in_sync}/{len(pos)}")
    table.add_row("end-to-end lag (s)", f"{lag:.3f}")
    for sku in sorted(pos)[:5]:
        table.add_row(f"  {sku}", f"POS {pos[sku]} fen -> shop {store.get(sku, '—')} yuan")
    return table


def run_demo(seconds: float = 0, rate: float = 20) -> None:
    console = Console(stderr=False)
    console.print("[bold]pos-cdc demo[/]: starting a local PostgreSQL (POS and storefront)…")
    with LocalPostgres(tempfile.mkdtemp(prefix="pos-cdc-demo-")) as pg:
        pos_dsn, store_dsn = pg.create_database("pos"), pg.create_database("storefront")
        seed(pos_dsn, store_dsn)
        os.environ["POS_DSN"] = pos_dsn
        os.environ["STORE_URL"] = pg.url("storefront")
        cfg = load_config(example_config())
        metrics = Metrics()
        pipeline = Pipeline(cfg, metrics)
        errors: list[BaseException] = []

        def guarded() -> None:
            try:
                pipeline.run()
            except BaseException as e:  # noqa: BLE001 - shown below
                errors.append(e)

        runner = threading.Thread(target=guarded, name="pipeline")
        runner.start()
        stop = threading.Event()
        made = [0]
        sim = threading.Thread(target=simulate, args=(pos_dsn, rate, stop, made), daemon=True)
        sim.start()
        deadline = time.monotonic() + seconds if seconds else float("inf")
        try:
            if sys.stdout.isatty():
                with Live(console=console, refresh_per_second=2) as live:
                    while time.monotonic() < deadline and runner.is_alive():
                        live.update(snapshot_view(pos_dsn, store_dsn, metrics, cfg.name, made[0]))
                        time.sleep(0.5)
            else:
                while time.monotonic() < deadline and runner.is_alive():
                    time.sleep(1)
                    t = snapshot_view(pos_dsn, store_dsn, metrics, cfg.name, made[0])
                    cells = [
                        f"{a}={b}" for a, b in zip(t.columns[0]._cells, t.columns[1]._cells, strict=True)
                    ]
                    print("; ".join(cells[:3]), flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            sim.join(5)
            time.sleep(0.5)  # let the last changes land
            pipeline.stop()
            runner.join(30)
        if errors:
            raise errors[0]
        final = snapshot_view(pos_dsn, store_dsn, metrics, cfg.name, made[0])
        console.print(final)
        console.print("demo finished; the local databases are removed.")
