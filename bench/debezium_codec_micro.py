"""Micro-benchmark of the Debezium-format codec: µs per event to encode (EnvelopeEncoder.records) and decode
(EnvelopeDecoder.decode) a 6-column price row (text key, text, int4, numeric(10,2), timestamptz, bool) as an
update, with schemas on and off, decimal_handling=precise. CPU time (process_time), best of 5, so that other work on
the machine inflates the figures less. Run: PYTHONPATH=. python bench/debezium_codec_micro.py [iterations]
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from decimal import Decimal

from cdc.events import ChangeEvent
from cdc.sinks.envelope import EnvelopeEncoder
from cdc.sources.debezium import EnvelopeDecoder

TYPES = {
    "sku": (25, -1),
    "title": (25, -1),
    "stock": (23, -1),
    "price": (1700, (10 << 16 | 2) + 4),
    "updated_at": (1184, -1),
    "active": (16, -1),
}
ROW = {
    "sku": "SKU-000123",
    "title": "Espresso beans 1kg",
    "stock": 42,
    "price": Decimal("19.99"),
    "updated_at": dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC),
    "active": True,
}


def event(i: int) -> ChangeEvent:
    return ChangeEvent(
        "u",
        "public",
        "products",
        None,
        dict(ROW),
        1000 + i,
        2000 + i,
        1,
        1_700_000_000_000,
        700 + i,
        db="pos",
        connector_name="pos-prices",
        key_columns=("sku",),
        toast=False,
        types=TYPES,
    )


def best_of(fn, items, rounds=5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best / len(items) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    events = [event(i) for i in range(n)]
    decoder = EnvelopeDecoder()
    for schemas in (True, False):
        enc = EnvelopeEncoder("pos-prices", "pos", schemas=schemas)
        us = best_of(enc.records, events)
        records = [enc.records(ev)[0] for ev in events]
        size = len(records[0].value)
        dus = best_of(lambda r: decoder.decode(r.topic, r.key, r.value), records)
        print(f"schemas={schemas!s:5}: encode {us:5.2f} µs/event, decode {dus:5.2f} µs/event ({size} bytes)")


if __name__ == "__main__":
    main()
