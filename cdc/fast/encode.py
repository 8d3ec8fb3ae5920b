"""The fast path's inner loop: pgoutput Insert/Update messages -> the storefront staging table's COPY lines.

One pass per message, no dict and no event: the new tuple's values are sliced out of the message, the key's
text is read off its columns, money columns go through their stages' own rounding (`MoneyStage.scaled`), and
every other value is the text PostgreSQL sent, escaped for COPY. The line has the staging table's layout
(cdc/sinks/sql/pg_merge.py): the storefront columns in the plan's order, then the key text, the op ('u': an
upsert), the commit LSN, the change's LSN, the commit time, the xid and the via column (NULL: the stream).

What it cannot encode exactly as the reference path would (an old tuple, an unchanged TOASTed or binary
value, a NULL key, a money value that is not a finite number or does not fit, a column count the plan does not
expect) ends the call: it returns that message's index, and the caller sends that message the reference way
(cdc/stages/runner.py), where the same rules hold it with its reason.

This module is compiled by Cython when a compiler is there (cdc/hotpath.py lists it); it must mean the same
interpreted or compiled (tests/unit/test_fast_encode.py checks both on random messages).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

try:
    import cython
except ImportError:  # interpreted without Cython: its declarations are no-ops
    from cdc import cython_shim as cython

# how a slot's value is written: as sent; as sent but escaped; through money stages' rounding (Decimal); an
# integer's decimal point shifted (a money stage dividing by a power of ten, no rounding: its own text)
# (CHECK: a money stage's column the storefront does not have: converted, for its holds, and not written)
PASS, TEXT, MONEY, SHIFT, CHECK = 0, 1, 2, 3, 4
KEY_SEP = b"\x1f"  # cdc.sinks.sql.bookkeeping.KEY_SEP, as bytes

_SPECIAL = re.compile(b"[\b\t\n\v\f\r\\\\]")  # what COPY text escapes (psycopg's set)
_ESCAPES = {
    b"\b": b"\\b",
    b"\t": b"\\t",
    b"\n": b"\\n",
    b"\v": b"\\v",
    b"\f": b"\\f",
    b"\r": b"\\r",
    b"\\": b"\\\\",
}


_JSON_SPECIAL = re.compile(
    b'[\x00-\x1f"\\\\\x7f-\xff]'
)  # what a JSON string cannot hold as it is (or is not ASCII)


def json_text(value: bytes) -> bytes | None:
    """`value` (UTF-8) as the inside of a JSON string; None when it is not UTF-8."""
    if _JSON_SPECIAL.search(value) is None:
        return value
    try:
        return json.dumps(value.decode("utf-8"))[1:-1].encode("ascii")
    except UnicodeDecodeError:
        return None


def _escape_match(m: re.Match) -> bytes:
    return _ESCAPES[m.group(0)]


def copy_text(value: bytes) -> bytes:
    """`value` escaped for COPY's text format."""
    if _SPECIAL.search(value) is None:
        return value
    return _SPECIAL.sub(_escape_match, value)


def shifted(v: bytes, shift: int, zeros: bytes) -> bytes:
    """An integer's text divided by 10**shift, with `zeros` appended: the text str() gives the Decimal a money
    stage makes of it when no rounding is needed (cdc/fast/plan.py says when: scale <= 6, so no exponent)."""
    neg = v[0] == 45  # '-'
    digits = v[1:] if neg else v
    if shift:
        if len(digits) <= shift:
            digits = b"0" * (shift + 1 - len(digits)) + digits
        text = digits[:-shift] + b"." + digits[-shift:] + zeros
    elif zeros:
        text = digits + b"." + zeros
    else:
        text = digits
    if neg and digits.strip(b"0"):
        return b"-" + text
    return text


@cython.ccall
def converted(v: bytes, convs: tuple):
    """A money column's value through its stages' conversions (MoneyStage.scaled, in order): the Decimal the
    reference path writes, or None where it holds the change (not a finite number, too large)."""
    try:
        d = Decimal(v.decode("ascii"))
        if not d.is_finite():
            return None
        for conv in convs:
            d = conv(d)
    except Exception:  # noqa: BLE001 - not a number, too large: the reference path holds it
        return None
    return d


@cython.ccall
@cython.locals(
    buf=bytes,
    vals=list,
    key_index=tuple,
    size=cython.Py_ssize_t,
    pos=cython.Py_ssize_t,
    end=cython.Py_ssize_t,
    j=cython.Py_ssize_t,
    ncols=cython.Py_ssize_t,
    kind=cython.Py_ssize_t,
)
def read_tuple(buf: bytes, ncols: int, vals: list, key_index: tuple):
    """An Insert or Update message's new tuple into `vals` (each column's text as sent, or None for NULL), and
    the key's text (the key columns' texts as sent, joined by KEY_SEP); None when the fast path cannot take the
    message: an old tuple first (a key change, REPLICA IDENTITY FULL), another column count than `ncols`, an
    unchanged TOASTed or binary value, a NULL key, or a message cut short. Shared by the encoders of both
    storefront forms (encode_mysql.py)."""
    size = len(buf)
    if size < 8 or buf[5] != 78:  # 'N': the new tuple follows at once (an Update with an old tuple: no)
        return None
    if (buf[6] << 8) + buf[7] != ncols:
        return None
    pos = 8
    j = 0
    while j < ncols:
        if pos >= size:
            return None
        kind = buf[pos]
        if kind == 116:  # 't': Int32 length, then the text
            if pos + 5 > size:
                return None
            if cython.compiled:  # C arithmetic on the bytes
                end = buf[pos + 1]
                end = (end << 8) | buf[pos + 2]
                end = (end << 8) | buf[pos + 3]
                end = (end << 8) | buf[pos + 4]
            else:  # the same number, in one call
                end = int.from_bytes(buf[pos + 1 : pos + 5], "big")
            end += pos + 5
            if end > size:
                return None
            vals[j] = buf[pos + 5 : end]
            pos = end
        elif kind == 110:  # 'n'
            vals[j] = None
            pos += 1
        else:  # 'u' (unchanged TOAST), 'b' (binary): the reference path
            return None
        j += 1
    if pos != size:
        return None
    # the key's text: each key column's text as sent (the plan admits only types whose text it is)
    if len(key_index) == 1:
        key = vals[key_index[0]]
        if key is None:
            return None
    else:
        parts = []
        for k in key_index:
            v = vals[k]
            if v is None:
                return None
            parts.append(v)
        key = KEY_SEP.join(parts)
    return key


def encode_run(
    payloads: list,
    lsns: list,
    start: int,
    ncols: int,
    slots: tuple,
    key_index: tuple,
    mid: bytes,
    tail: bytes,
    lines: dict,
    entries: dict | None = None,
) -> int:
    """Encodes `payloads[start:]` into `lines` (key text -> COPY line; a later change of a key replaces the
    earlier one) until a message it cannot encode; returns that message's index (len(payloads): all were).

    Two forms. `entries` None: each line carries the key's position after the storefront columns (the
    merge checks it, or claims the key: `mid`, `tail` below). Otherwise each line holds the storefront columns
    only, and `entries` (key text -> its cdc_applied entry, JSON) gets the position: `mid` is
    b'",<commit lsn>,' and `tail` b',<commit time>,<xid>,"u",null]'.

    `ncols`: the relation's column count; `slots`: per storefront column, (source column index, PASS | TEXT |
    MONEY | SHIFT, the money conversions in order, or SHIFT's (shift, zeros)), then CHECK slots, written
    nowhere; `key_index`: the source columns of the storefront key, in its order; `mid`:
    b"\\tu\\t<commit lsn>\\t"; `tail`: b"\\t<commit time>\\t<xid>\\t\\\\N\\n".

    The fast path runs cdc/fast/encode_c.py's encode_run, which writes the same lines into a C buffer when
    compiled, and calls this one interpreted (and `encode_one` for a message it leaves).
    """
    vals = [None] * ncols
    n, i = len(payloads), start
    while i < n and encode_one(
        payloads[i], lsns[i], ncols, vals, slots, key_index, mid, tail, lines, entries
    ):
        i += 1
    return i


@cython.ccall
@cython.locals(buf=bytes, vals=list)
def encode_one(
    buf: bytes,
    lsn: int,
    ncols: int,
    vals: list,
    slots: tuple,
    key_index: tuple,
    mid: bytes,
    tail: bytes,
    lines: dict,
    entries: dict | None,
):
    """One message into `lines` (and `entries`), as encode_run says; False when it cannot be encoded."""
    key = read_tuple(buf, ncols, vals, key_index)
    if key is None:
        return False
    out = []
    for src, how, convs in slots:
        v = vals[src]
        if v is None:
            if how != CHECK:
                out.append(b"\\N")
        elif how == PASS:
            out.append(v)
        elif how == TEXT:
            out.append(copy_text(v))
        elif how == SHIFT:
            out.append(shifted(v, convs[0], convs[1]))
        else:
            d = converted(v, convs)
            if d is None:
                return False
            if how == MONEY:
                out.append(str(d).encode("ascii"))
    if entries is None:
        out.append(copy_text(key))
        lines[key] = b"\t".join(out) + mid + b"%d" % lsn + tail
    else:
        k = json_text(key)
        if k is None:
            return False
        lines[key] = b"\t".join(out) + b"\n"
        entries[key] = b'["' + k + mid + b"%d" % lsn + tail
    return True
