"""encode.py's `encode_run` in C: the same COPY lines, written byte by byte into a buffer on the stack.

encode.py builds each line from Python objects: a bytes object per column, a list, a join and a few
concatenations, ~1.7 µs a change compiled. Here a message's columns are found by offset (no bytes object per
column), and the line (and, for the lean form, the cdc_applied entry) is written into one C buffer: COPY's
escapes, SHIFT's decimal point and the change's LSN digit by digit (cbytes.py's C functions, cimported). Per
change that leaves two Python objects (the key and the line; three with the entry) and one dict store.

What it does not write itself goes to encode.py's `encode_one`, the reference for it, message by message: a
key of several columns, a line longer than the buffer, a key that is not plain ASCII for JSON, more columns
than MAX_COLS. Money columns (MONEY, CHECK) go through `encode.converted` as there.

Interpreted (no compiler at install, or CDC_PURE_PYTHON=1), `encode_run` is encode.py's: this module's C
code only means something compiled (tests/unit/test_fast_encode.py holds both to the reference path's rows).
"""

from __future__ import annotations

from cdc.fast.encode import CHECK, PASS, SHIFT, TEXT, converted, encode_one
from cdc.fast.encode import encode_run as encode_py
from cdc.fast.encode_mysql import BOOL, DATETIME, NUMBER, TEXT_NBE, mysql_datetime
from cdc.fast.encode_mysql import encode_run as encode_mysql_py

try:
    import cython
except ImportError:  # interpreted without Cython: its declarations are no-ops
    from cdc import cython_shim as cython

from cdc.fast.cbytes import CAP

_CAP = cython.declare(cython.Py_ssize_t, CAP)  # compiled: a C integer, no Python int in each check

# cbytes.py's C byte writers: compiled, cimported (C calls, declared in cbytes.pxd); interpreted, its Python
# functions (which nothing calls then). Cython compiles only the first branch (`cython.compiled` is true for
# it); Python, with Cython or cdc/cython_shim.py, runs only the second.
if cython.compiled:
    from cython.cimports.cdc.fast.cbytes import (
        is_plain_number,
        put_digits,
        put_escaped,
        put_json,
        put_quoted,
        put_shifted,
    )
else:
    from cdc.fast.cbytes import (
        is_plain_number,
        put_digits,
        put_escaped,
        put_json,
        put_quoted,
        put_shifted,
    )

MAX_COLS = 256  # a relation with more columns goes through encode_one (the arrays below are this long)


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
    """encode.encode_run (its docstring says what each argument is), in C when compiled."""
    if not cython.compiled or len(key_index) != 1 or ncols > MAX_COLS or len(slots) > MAX_COLS:
        return encode_py(payloads, lsns, start, ncols, slots, key_index, mid, tail, lines, entries)
    return _run(payloads, lsns, start, ncols, slots, key_index[0], mid, tail, lines, entries, False)


def encode_run_mysql(
    payloads: list,
    lsns: list,
    start: int,
    ncols: int,
    slots: tuple,
    key_index: tuple,
    mid: bytes,
    tail: bytes,
    lines: dict,
    entries: dict,
) -> int:
    """encode_mysql.encode_run (MariaDB's VALUES tuples, lean), in C when compiled."""
    if not cython.compiled or len(key_index) != 1 or ncols > MAX_COLS or len(slots) > MAX_COLS:
        return encode_mysql_py(payloads, lsns, start, ncols, slots, key_index, mid, tail, lines, entries)
    return _run(payloads, lsns, start, ncols, slots, key_index[0], mid, tail, lines, entries, True)


@cython.cfunc
@cython.locals(
    n=cython.Py_ssize_t,
    i=cython.Py_ssize_t,
    j=cython.Py_ssize_t,
    s=cython.Py_ssize_t,
    ncols=cython.Py_ssize_t,
    nslots=cython.Py_ssize_t,
    key=cython.Py_ssize_t,
    size=cython.Py_ssize_t,
    pos=cython.Py_ssize_t,
    ln=cython.Py_ssize_t,
    at=cython.Py_ssize_t,
    h=cython.Py_ssize_t,
    kind=cython.uchar,
    first=cython.bint,
    p=cython.p_uchar,
    o=cython.p_uchar,
    end=cython.Py_ssize_t,
    buf=bytes,
    money=bytes,
    literal=bytes,
    vals=list,
    m=cython.p_uchar,
    mp=cython.p_uchar,
    tp=cython.p_uchar,
    np=cython.p_uchar,
    lp=cython.p_uchar,
    hp=cython.p_uchar,
    nmid=cython.Py_ssize_t,
    ntail=cython.Py_ssize_t,
    mysql=cython.bint,
    sep=cython.uchar,
    nnull=cython.Py_ssize_t,
)
def _run(
    payloads: list,
    lsns: list,
    start,
    ncols,
    slots: tuple,
    key,
    mid: bytes,
    tail: bytes,
    lines: dict,
    entries,
    mysql,
):
    starts = cython.declare(cython.Py_ssize_t[256])  # MAX_COLS: each column's value in the message
    lens = cython.declare(cython.Py_ssize_t[256])  # its length; -1: NULL
    src = cython.declare(cython.Py_ssize_t[256])  # per slot: its source column
    how = cython.declare(cython.Py_ssize_t[256])  # per slot: PASS, TEXT, ...
    shift = cython.declare(cython.Py_ssize_t[256])  # per SHIFT slot: the shift, and its zeros
    zeros = cython.declare(cython.Py_ssize_t[256])
    out = cython.declare(cython.uchar[16400])  # CAP, and room for a last byte or two past a check
    o = cython.cast(cython.p_uchar, out)
    mp, tp, nmid, ntail = mid, tail, len(mid), len(tail)  # (bytes to their C buffers)
    hp = b'["'  # the entry's start
    if mysql:  # MariaDB: (<literal>,<literal>,...)
        sep, np, nnull, lp = 44, b"NULL", 4, b")"
    else:  # COPY text: tab-separated, \\N for NULL, a line
        sep, np, nnull, lp = 9, b"\\N", 2, b"\n"
    nslots = len(slots)
    for s in range(nslots):
        src[s], how[s] = slots[s][0], slots[s][1]
        if how[s] == SHIFT:
            shift[s], zeros[s] = slots[s][2][0], len(slots[s][2][1])
    vals = None
    n = len(payloads)
    i = start
    while i < n:
        buf = payloads[i]
        size = len(buf)
        p = buf
        # the new tuple's columns, by offset (read_tuple's checks, in its order)
        if size < 8 or p[5] != 78 or (p[6] << 8) + p[7] != ncols:
            return i
        pos = 8
        for j in range(ncols):
            if pos >= size:
                return i
            kind = p[pos]
            if kind == 116:  # 't'
                if pos + 5 > size:
                    return i
                ln = p[pos + 1]
                ln = (ln << 8) | p[pos + 2]
                ln = (ln << 8) | p[pos + 3]
                ln = (ln << 8) | p[pos + 4]
                if pos + 5 + ln > size:
                    return i
                starts[j], lens[j] = pos + 5, ln
                pos += 5 + ln
            elif kind == 110:  # 'n'
                lens[j] = -1
                pos += 1
            else:
                return i
        if pos != size or lens[key] < 0:
            return i
        # the line: the storefront columns, separated
        at = 1 if mysql else 0
        if mysql:
            o[0] = 40  # '('
        first = True
        for s in range(nslots):
            if at < 0:  # it does not fit, or a value C leaves: encode.py's way from here, in its order
                break
            j, h = src[s], how[s]
            if lens[j] < 0:  # NULL
                if h == CHECK:
                    continue
                at = _put(o, _sep(o, at, first, sep), np, nnull)
            elif h == PASS:
                at = _put(o, _sep(o, at, first, sep), p + starts[j], lens[j])
            elif h == TEXT and not mysql:
                at = put_escaped(o, _sep(o, at, first, sep), p + starts[j], lens[j])
            elif h == TEXT or h == TEXT_NBE:
                at = put_quoted(o, _sep(o, at, first, sep), p + starts[j], lens[j], h == TEXT_NBE)
            elif h == SHIFT:
                at = put_shifted(o, _sep(o, at, first, sep), p + starts[j], lens[j], shift[s], zeros[s])
            elif h == NUMBER:  # as sent, where str(Decimal) gives the same text (encode_mysql.py)
                if not is_plain_number(p + starts[j], lens[j]):
                    return i
                at = _put(o, _sep(o, at, first, sep), p + starts[j], lens[j])
            elif h == BOOL:  # 't', 'f' -> 1, 0
                if lens[j] != 1 or (p[starts[j]] != 116 and p[starts[j]] != 102):
                    return i
                at = _put(o, _sep(o, at, first, sep), b"1" if p[starts[j]] == 116 else b"0", 1)
            elif h == DATETIME:
                literal = mysql_datetime(buf[starts[j] : starts[j] + lens[j]])
                if literal is None:
                    return i
                m = literal
                at = _put(o, _sep(o, at, first, sep), m, len(literal))
            else:  # MONEY, CHECK: the stages' conversions (a Decimal)
                d = converted(buf[starts[j] : starts[j] + lens[j]], slots[s][2])
                if d is None:
                    return i
                if h == CHECK:
                    continue
                money = str(d).encode("ascii")
                m = money
                at = _put(o, _sep(o, at, first, sep), m, len(money))
            first = False
        lsn = lsns[i]
        if entries is None:  # then the key (escaped) and its position
            at = put_escaped(o, _sep(o, at, first, sep), p + starts[key], lens[key])
            at = put_digits(o, _put(o, at, mp, nmid), lsn)
            at = _put(o, at, tp, ntail)
            end = at
        else:  # then the entry, after the line: ["<key>", <commit lsn>, <lsn>, ...]
            end = _put(o, at, lp, 1)
            at = put_json(o, _put(o, end, hp, 2), p + starts[key], lens[key])
            at = put_digits(o, _put(o, at, mp, nmid), lsn)
            at = _put(o, at, tp, ntail)
        if at < 0 and mysql:  # too long for the buffer, or a key JSON needs escapes for: the Python way
            if not encode_mysql_py([buf], [lsn], 0, ncols, slots, (key,), mid, tail, lines, entries):
                return i
        elif at < 0:
            if vals is None:
                vals = [None] * ncols
            if not encode_one(buf, lsn, ncols, vals, slots, (key,), mid, tail, lines, entries):
                return i
        else:
            k = buf[starts[key] : starts[key] + lens[key]]
            lines[k] = o[:end]
            if entries is not None:
                entries[k] = o[end:at]
        i += 1
    return i


# The two smallest writers, inline here (the others are cbytes.py's): each puts its bytes at o[at:] and returns
# the new end, or -1 when they would not fit in CAP bytes (or `at` is -1 already: one check of the last one's
# result covers a line).


@cython.cfunc
@cython.inline
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(o=cython.p_uchar, at=cython.Py_ssize_t, first=cython.bint, sep=cython.uchar)
def _sep(o, at, first, sep):
    """The separator (a tab, a comma) before every column but the first."""
    if first or at < 0:
        return at
    if at + 1 > _CAP:
        return -1
    o[at] = sep
    return at + 1


@cython.cfunc
@cython.inline
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(
    o=cython.p_uchar, at=cython.Py_ssize_t, s=cython.p_uchar, ln=cython.Py_ssize_t, k=cython.Py_ssize_t
)
def _put(o, at, s, ln):
    """s[:ln] as it is."""
    if at < 0 or at + ln > _CAP:
        return -1
    for k in range(ln):
        o[at + k] = s[k]
    return at + ln
