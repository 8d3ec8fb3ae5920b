"""The pure parts of `cdc reconcile` (cdc/ops/reconcile.py): merging two key-ordered streams, key-range
chunks and their checksums, and comparing a value as the POS gives it with the value a storefront stores.

Key order is the bytewise order of a key's text (`key_text`: the storefront key columns' text joined by
\\x1f, the spelling of the sink's bookkeeping). Python compares str by code point, which is the order of
their UTF-8 bytes, so it agrees with PostgreSQL's COLLATE "C", MariaDB's binary collation and SQLite's
BINARY collation; `merge_sorted` checks that each stream really comes in that order and raises OrderError
when one does not (a key type whose text sorts differently in a database), rather than report false drift.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

_END = object()

# checksum buckets: about this many rows each, at most MAX_BUCKETS (their counts and sums cross the network)
ROWS_PER_BUCKET = 16
MAX_BUCKETS = 200_000


class OrderError(Exception):
    """A stream of keys that is not in bytewise order (or repeats a storefront key)."""

    def __init__(self, side: str, before: str, after: str):
        super().__init__(
            f"the {side} rows do not come in the bytewise order of their keys ({before!r} before {after!r}): "
            "a key column whose text sorts differently in the database; reconcile needs text, integer, "
            "uuid or date key columns"
        )
        self.side, self.before, self.after = side, before, after


def merge_sorted(
    source: Iterable[tuple[str, Any]], store: Iterable[tuple[str, Any]]
) -> Iterator[tuple[str, list, Any]]:
    """Merges two key-ordered streams of (key, item): yields (key, [the source items of that key], the
    storefront item or None) in key order, a key present on either side once. Several source items may
    share a key (several POS rows for one storefront row); the storefront has one row per key."""
    src, sto = iter(source), iter(store)
    s, t = next(src, _END), next(sto, _END)
    while s is not _END or t is not _END:
        if t is _END or (s is not _END and s[0] < t[0]):
            key = s[0]
            group, s = _group(src, s)
            yield key, group, None
        elif s is _END or t[0] < s[0]:
            key, item = t
            t = _next_store(sto, key)
            yield key, [], item
        else:
            key, item = t
            group, s = _group(src, s)
            t = _next_store(sto, key)
            yield key, group, item


def _group(src: Iterator, first: tuple) -> tuple[list, Any]:
    key = first[0]
    group = [first[1]]
    nxt = next(src, _END)
    while nxt is not _END and nxt[0] == key:
        group.append(nxt[1])
        nxt = next(src, _END)
    if nxt is not _END and nxt[0] < key:
        raise OrderError("POS", key, nxt[0])
    return group, nxt


def _next_store(sto: Iterator, key: str) -> Any:
    nxt = next(sto, _END)
    if nxt is not _END and nxt[0] <= key:
        raise OrderError("storefront", key, nxt[0])
    return nxt


# --- checksum buckets -----------------------------------------------------------------------------------------------


def bucket_count(estimate: int) -> int:
    """How many hash buckets the checksums of a table of about `estimate` rows go into: about ROWS_PER_BUCKET
    rows each, so that a scattered 1 % of changed rows leaves most buckets equal, and at most MAX_BUCKETS."""
    return max(1, min(MAX_BUCKETS, estimate // ROWS_PER_BUCKET))


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a key text, as both databases compute it in SQL (reconcile_checksum.BUCKET): the first
    32 bits of the md5 of its UTF-8 bytes, modulo the bucket count."""
    return int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % buckets


def differing_buckets(
    source: Iterable[tuple[int, int, Any]], store: Iterable[tuple[int, int, Any]]
) -> tuple[list[int], int, int]:
    """Two streams of (bucket, row count, checksum) in bucket order -> (the buckets that differ, a bucket one
    side lacks included, in order; the rows counted on each side). Holds only the differing buckets."""
    differ: list[int] = []
    rows = [0, 0]
    src, sto = iter(source), iter(store)
    s, t = next(src, None), next(sto, None)
    while s is not None or t is not None:
        if t is None or (s is not None and s[0] < t[0]):
            differ.append(s[0])
            rows[0] += s[1]
            s = next(src, None)
        elif s is None or t[0] < s[0]:
            differ.append(t[0])
            rows[1] += t[1]
            t = next(sto, None)
        else:
            if (s[1], s[2]) != (t[1], t[2]):
                differ.append(s[0])
            rows[0] += s[1]
            rows[1] += t[1]
            s, t = next(src, None), next(sto, None)
    return differ, rows[0], rows[1]


# --- values -----------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")
_NUM, _TIME, _DATE, _BYTES, _UUID, _STR, _OTHER = range(7)


def _kind(v: Any) -> int:
    if isinstance(v, bool | int | Decimal | float):
        return _NUM
    if isinstance(v, str):
        return _STR
    if isinstance(v, dt.datetime):
        return _TIME
    if isinstance(v, dt.date):
        return _DATE
    if isinstance(v, bytes | bytearray | memoryview):
        return _BYTES
    if isinstance(v, uuid.UUID):
        return _UUID
    return _OTHER


def number_text(v: Any) -> str | None:
    """A number's canonical text: exact, no exponent, no trailing zeros ('12.50' -> '12.5', 1250 -> '1250',
    -0 -> '0'); None when `v` is not a number (a str that does not read as one)."""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        d = Decimal(repr(v))
    elif isinstance(v, Decimal):
        d = v
    elif isinstance(v, str) and _NUMBER.fullmatch(v):
        d = Decimal(v.strip())
    else:
        return None
    if not d.is_finite():
        return str(d)
    if d == 0:
        return "0"
    d = d.normalize()
    return format(d, "f")


def _time(v: Any) -> dt.datetime | None:
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).replace(tzinfo=None) if v.tzinfo is not None else v
    return None


def _as(kind: int, v: Any) -> Any:
    """`v` in the canonical form of `kind` (None: it has none)."""
    try:
        if kind == _NUM:
            return number_text(v)
        if kind == _TIME:
            return _time(v)
        if kind == _DATE:
            if isinstance(v, dt.datetime):
                return v.date() if v.time() == dt.time() else None
            return dt.date.fromisoformat(v.strip()) if isinstance(v, str) else v
        if kind == _BYTES:
            return bytes(v) if not isinstance(v, str) else None
        if kind == _UUID:
            return uuid.UUID(str(v))
    except (ValueError, TypeError, InvalidOperation):
        return None
    return str(v)


def same_value(expected: Any, stored: Any) -> bool:
    """Whether the storefront's `stored` value is the POS value `expected` (after the stages), tolerant of
    how each storefront keeps a type: Decimal against a numeric column at another scale or SQLite's exact
    decimal TEXT, booleans as 1/0, timestamps with or without a zone (an aware one compares as UTC, a naive
    one is taken as UTC), a date or uuid as text. Two strings compare exactly."""
    if expected is None or stored is None:
        return expected is None and stored is None
    if expected == stored:
        return True
    a, b = _kind(expected), _kind(stored)
    if a == _STR and b == _STR:
        return False
    kind = a if a != _STR else b  # the typed side says how to read a str
    x, y = _as(kind, expected), _as(kind, stored)
    return x is not None and x == y


def differing_columns(
    expected: Mapping[str, Any], stored: Mapping[str, Any], columns: Iterable[str]
) -> list[str]:
    """The `columns` whose values differ (same_value) between the POS row (after the stages) and the
    storefront row."""
    return [c for c in columns if not same_value(expected.get(c), stored.get(c))]
