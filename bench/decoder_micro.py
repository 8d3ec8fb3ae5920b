"""Micro-benchmark of the pgoutput decoder's hot path: µs per Update message of a 6-column row
(text, text, int4, numeric, timestamptz, bool), as PostgreSQL sends it for a table with the default replica
identity (no old tuple). Run: python bench/decoder_micro.py [iterations] [--all-text]; --all-text declares
every column text (its converter is str), leaving the decoding without the value conversions. CDC_PURE_PYTHON=1
for the .py modules where the Cython-compiled ones are installed (the first line says which ran).
"""

from __future__ import annotations

import struct
import sys
import time

from cdc import hotpath
from cdc.sources.pgoutput import Decoder, Update

COLUMNS = [  # (flags, name, type oid)
    (1, "sku", 25),
    (0, "title", 25),
    (0, "stock", 23),
    (0, "price", 1700),
    (0, "updated_at", 1184),
    (0, "active", 16),
]
VALUES = ["SKU-000123", "Espresso beans 1kg", "42", "19.99", "2024-05-06 07:08:09.123456+00", "t"]


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def relation_message(oid: int) -> bytes:
    out = b"R" + struct.pack("!I", oid) + cstr("public") + cstr("products") + b"d"
    out += struct.pack("!H", len(COLUMNS))
    for flags, name, type_oid in COLUMNS:
        out += struct.pack("!B", flags) + cstr(name) + struct.pack("!Ii", type_oid, -1)
    return out


def update_message(oid: int) -> bytes:
    out = b"U" + struct.pack("!I", oid) + b"N" + struct.pack("!H", len(VALUES))
    for value in VALUES:
        data = value.encode()
        out += b"t" + struct.pack("!I", len(data)) + data
    return out


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--all-text"]
    n = int(args[0]) if args else 200_000
    if "--all-text" in sys.argv:
        COLUMNS[:] = [(flags, name, 25) for flags, name, _ in COLUMNS]
    decoder = Decoder()
    decoder.decode(relation_message(16384))
    msg = update_message(16384)
    assert isinstance(decoder.decode(msg), Update)
    decode = decoder.decode
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            decode(msg)
        best = min(best, time.perf_counter() - t0)
    print(f"hot path: {hotpath.summary()}")
    kind = "all text" if "--all-text" in sys.argv else "text, text, int4, numeric, timestamptz, bool"
    print(
        f"pgoutput Update, 6 columns ({kind}; {len(msg)} bytes): {best / n * 1e6:.2f} µs/message (best of 5 x {n})"
    )


if __name__ == "__main__":
    main()
