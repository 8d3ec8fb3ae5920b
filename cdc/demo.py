"""`cdc demo`: a local POS PostgreSQL, a SQLite storefront, simulated price changes, and live sync and lag.

Everything is made in a temp dir and removed on exit (Ctrl-C included). The connector is the example a DBA
copies, connectors/pos-to-storefront.yaml (an embedded copy is used when the repo is not at hand). With
`--kafka` the same prices travel over a local Apache Kafka broker instead, through the two connectors of a
Kafka hop: connectors/pos-to-kafka.yaml and connectors/kafka-to-storefront.yaml.

Besides cashier-style reprices, the demo plays two scenes a few seconds in: a promotion on PROMO_SKU that
starts and ends on its own (the `schedule` stage), and a fat-fingered price on FAT_SKU (a 99 % drop) that the
`guard` quarantines, so the storefront keeps its price.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from decimal import Decimal
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
    item_code       text        NOT NULL,
    store_id        int         NOT NULL,
    channel         text        NOT NULL,
    price_fen       bigint      NOT NULL,
    promo_price_fen bigint,
    promo_from      timestamptz,
    promo_to        timestamptz,
    cost_fen        bigint,
    updated_by      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (item_code, store_id, channel)
);
"""
# SQLite has no exact decimal type: prices are TEXT, which the sink fills with exact decimal strings
STORE_SCHEMA = """
CREATE TABLE product_price (
    sku        text PRIMARY KEY,
    price      text NOT NULL,
    updated_at timestamp,
    deleted_at timestamp
);
"""
N_ITEMS = 200
CASHIERS = ["alice", "bo", "chen", "dana"]
PROMO_SKU, FAT_SKU = "SKU-00001", "SKU-00002"
PROMO_AT, PROMO_FOR = 3.0, 3.0  # the promotion starts this many seconds into the demo, and lasts this long
FAT_AT = 2.0  # when the fat-fingered price is typed
# the effective online price, as the `schedule` stage computes it
EFFECTIVE = (
    "CASE WHEN promo_price_fen IS NOT NULL AND (promo_from IS NULL OR promo_from <= now())"
    " AND (promo_to IS NULL OR now() < promo_to) THEN promo_price_fen ELSE price_fen END"
)


def example_config(name: str = "pos-to-storefront.yaml") -> Path:
    repo = Path(__file__).resolve().parent.parent / "connectors" / name
    if repo.exists():
        return repo
    return Path(str(resources.files("cdc") / name))


def store_db(path: str) -> sqlite3.Connection:
    """The storefront (a SQLite file, WAL mode: the demo reads while the connector writes)."""
    return sqlite3.connect(path, timeout=10, isolation_level=None)


def seed(pos_dsn: str, store_path: str) -> None:
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
    with closing(store_db(store_path)) as c:
        c.execute(STORE_SCHEMA)


def simulate(pos_dsn: str, rate: float, stop: threading.Event, counter: list[int], events: list[str]) -> None:
    """Cashier-style price changes (mostly single-row reprices of up to 15 %, now and then a category
    repriced at once), and the two scenes: a promotion, and a fat-fingered price."""
    began = time.monotonic()
    scenes = [(0.5, _plan_promotion), (FAT_AT, _fat_finger)]
    with psycopg.connect(pos_dsn, autocommit=True) as c:
        while not stop.is_set():
            while scenes and time.monotonic() - began >= scenes[0][0]:
                events.append(scenes.pop(0)[1](c))
            not_these = (PROMO_SKU, FAT_SKU)
            if random.random() < 0.02:
                n = c.execute(
                    "UPDATE item_price SET price_fen = greatest(cost_fen * 11 / 10, price_fen * %s / 100),"
                    " updated_by = 'category-manager', updated_at = now()"
                    " WHERE channel = 'ONLINE' AND item_code LIKE %s AND item_code <> ALL(%s)",
                    (random.choice([90, 95, 105, 110]), f"SKU-000{random.randint(0, 9)}%", list(not_these)),
                ).rowcount
            else:
                sku = f"SKU-{random.randrange(N_ITEMS):05d}"
                n = 0
                if sku not in not_these:
                    n = c.execute(
                        "UPDATE item_price SET price_fen = greatest(cost_fen * 11 / 10, price_fen * %s / 100),"
                        " updated_by = %s, updated_at = now() WHERE item_code = %s AND channel = %s",
                        (
                            random.randint(85, 115),
                            random.choice(CASHIERS),
                            sku,
                            random.choice(["ONLINE", "STORE"]),
                        ),
                    ).rowcount
            counter[0] += n
            stop.wait(1 / rate)


def _plan_promotion(c: psycopg.Connection) -> str:
    row = c.execute(
        "UPDATE item_price SET promo_price_fen = price_fen * 8 / 10, updated_by = 'marketing',"
        " promo_from = now() + make_interval(secs => %s), promo_to = now() + make_interval(secs => %s)"
        " WHERE item_code = %s AND channel = 'ONLINE' RETURNING price_fen, promo_price_fen",
        (PROMO_AT - 0.5, PROMO_AT - 0.5 + PROMO_FOR, PROMO_SKU),
    ).fetchone()
    return (
        f"marketing plans 20 % off {PROMO_SKU}: {row[0] / 100:.2f} -> {row[1] / 100:.2f} yuan, "
        f"starting in {PROMO_AT - 0.5:.1f}s, for {PROMO_FOR:.0f}s"
    )


def _fat_finger(c: psycopg.Connection) -> str:
    row = c.execute(
        "UPDATE item_price SET price_fen = greatest(1, price_fen / 100), updated_by = 'bo', updated_at = now()"
        " WHERE item_code = %s AND channel = 'ONLINE' RETURNING price_fen",
        (FAT_SKU,),
    ).fetchone()
    return f"cashier bo fat-fingers {FAT_SKU}: {row[0] / 100:.2f} yuan (a 99 % drop)"


def snapshot_view(pos_dsn: str, store_path: str, metrics: Metrics, name: str, made: int) -> Table:
    with psycopg.connect(pos_dsn) as c:
        pos = dict(c.execute(f"SELECT item_code, {EFFECTIVE} FROM item_price WHERE channel = 'ONLINE'"))
    with closing(store_db(store_path)) as c:
        store = {
            sku: Decimal(price)
            for sku, price in c.execute("SELECT sku, price FROM product_price WHERE deleted_at IS NULL")
        }
        held = dict(
            c.execute(
                "SELECT row_key, id FROM cdc_held WHERE kind = 'quarantine' AND status = 'held' ORDER BY id"
            ).fetchall()
        )
    in_sync = sum(1 for k, v in pos.items() if k in store and store[k] * 100 == v)
    lag = metrics.end_to_end_lag.labels(name)._value.get()
    table = Table(title="pos-cdc demo: POS (fen) -> storefront (yuan)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("POS rows changed", str(made))
    table.add_row("online SKUs in sync", f"{in_sync}/{len(pos)}")
    table.add_row("end-to-end lag (s)", f"{lag:.3f}")
    table.add_row("quarantined", str(len(held)))
    # the scenes' SKUs always, then the first few others; a held price is marked where the eye is
    for sku in [PROMO_SKU, FAT_SKU] + [k for k in sorted(pos) if k not in (PROMO_SKU, FAT_SKU)][:3]:
        mark = f"  QUARANTINED (entry {held[sku]}): shop kept its price" if sku in held else ""
        table.add_row(f"  {sku}", f"POS {pos.get(sku, '—')} fen -> shop {store.get(sku, '—')} yuan{mark}")
    return table


def scene_lines(store_path: str, seen: dict) -> list[str]:
    """What the storefront did about the scenes since last asked: the promotion's price, quarantined prices."""
    out = []
    with closing(store_db(store_path)) as c:
        row = c.execute("SELECT price FROM product_price WHERE sku = ?", (PROMO_SKU,)).fetchone()
        held = c.execute(
            "SELECT id, row_key, reason FROM cdc_held WHERE kind = 'quarantine' AND status = 'held' ORDER BY id"
        ).fetchall()
    price = Decimal(row[0]) if row else None
    if price is not None and seen.get("promo") is not None and price != seen["promo"]:
        what = "starts" if price < seen["promo"] else "ends"
        out.append(f"storefront: promotion on {PROMO_SKU} {what}: {seen['promo']} -> {price} yuan")
    seen["promo"] = price
    for entry_id, key, reason in held:
        if entry_id not in seen.setdefault("held", set()):
            seen["held"].add(entry_id)
            out.append(f"storefront: quarantined {key} (entry {entry_id}), kept its price: {reason}")
    return out


def run_demo(seconds: float = 0, rate: float = 20, kafka: bool = False) -> None:
    console = Console(stderr=False)
    console.print(
        "[bold]pos-cdc demo[/]: starting a local POS PostgreSQL, "
        + ("a local Kafka broker, " if kafka else "")
        + "and a SQLite storefront…"
    )
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(LocalPostgres(tempfile.mkdtemp(prefix="pos-cdc-demo-")))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        pos_dsn, store_path = pg.create_database("pos"), os.path.join(tmp, "storefront.db")
        seed(pos_dsn, store_path)
        os.environ["POS_DSN"] = pos_dsn
        os.environ["STORE_URL"] = f"sqlite:///{store_path}"
        files = ["pos-to-storefront.yaml"]
        if kafka:
            from cdc.localkafka import LocalKafka

            broker = stack.enter_context(LocalKafka())
            os.environ["KAFKA_BOOTSTRAP"] = broker.bootstrap
            files = ["pos-to-kafka.yaml", "kafka-to-storefront.yaml"]
            console.print(f"Kafka at {broker.bootstrap}: POS -> pos.public.item_price -> storefront")
        configs = [load_config(example_config(f)) for f in files]
        cfg = configs[-1]  # the one that writes the storefront: its lag is the shopper's
        metrics = Metrics()
        pipelines = [Pipeline(c, metrics) for c in configs]
        errors: list[BaseException] = []

        def guarded(pipeline: Pipeline) -> None:
            try:
                pipeline.run()
            except BaseException as e:  # noqa: BLE001 - shown below
                errors.append(e)

        runners = [threading.Thread(target=guarded, args=(p,), name=p.cfg.name) for p in pipelines]
        for t in runners:
            t.start()
        runner = _AllAlive(runners)
        wait_for_snapshot(store_path, runner)
        stop = threading.Event()
        made, events, seen = [0], [], {}
        sim = threading.Thread(target=simulate, args=(pos_dsn, rate, stop, made, events), daemon=True)
        sim.start()
        deadline = time.monotonic() + seconds if seconds else float("inf")

        def news() -> list[str]:
            out = [f"POS: {events.pop(0)}" for _ in range(len(events))]
            return out + scene_lines(store_path, seen)

        try:
            if sys.stdout.isatty():
                # log lines go through the live console (above the table, which otherwise leaves stale copies
                # of itself where they cut in); transient: the table is printed once, at the end
                stack.enter_context(_logs_through(console))
                with Live(console=console, refresh_per_second=2, transient=True) as live:
                    while time.monotonic() < deadline and runner.is_alive():
                        for line in news():
                            live.console.print(line)
                        live.update(snapshot_view(pos_dsn, store_path, metrics, cfg.name, made[0]))
                        time.sleep(0.5)
            else:
                while time.monotonic() < deadline and runner.is_alive():
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                    for line in news():
                        print(line, flush=True)
                    t = snapshot_view(pos_dsn, store_path, metrics, cfg.name, made[0])
                    cells = [
                        f"{a}={b}" for a, b in zip(t.columns[0]._cells, t.columns[1]._cells, strict=True)
                    ]
                    print("; ".join(cells[:4]), flush=True)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            sim.join(5)
            time.sleep(1.5 if kafka else 0.5)  # let the last changes land
            for p in pipelines:
                p.stop()
            for t in runners:
                t.join(30)
        if errors:
            raise errors[0]
        for line in news():
            console.print(line)
        final = snapshot_view(pos_dsn, store_path, metrics, cfg.name, made[0])
        console.print(final)
        console.print(
            "with a real connector: `cdc quarantine CONFIG list | approve ID | reject ID` decides on held "
            "prices, and the storefront's cdc_price_history table says who changed what"
        )
        console.print("demo finished; the local databases are removed.")


@contextlib.contextmanager
def _logs_through(console: Console):
    """The root logger's lines printed by `console` while a Live display runs on it, then as before."""
    import logging

    from rich.logging import RichHandler

    root = logging.getLogger()
    before = root.handlers[:]
    root.handlers = [RichHandler(console=console, show_path=False, markup=False)]
    try:
        yield
    finally:
        root.handlers = before


class _AllAlive:
    """`is_alive()` of a set of threads: all of them are (one connector failing ends the demo)."""

    def __init__(self, threads: list[threading.Thread]):
        self.threads = threads

    def is_alive(self) -> bool:
        return all(t.is_alive() for t in self.threads)


def wait_for_snapshot(store_path: str, runner, timeout: float = 60) -> None:
    """Until the storefront has the online prices (so the scenes play against a synced storefront)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and runner.is_alive():
        with closing(store_db(store_path)) as c:
            if (
                c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'cdc_offsets'").fetchone()[0]
                and c.execute("SELECT count(*) FROM cdc_offsets").fetchone()[0]
            ):
                return
        time.sleep(0.1)
