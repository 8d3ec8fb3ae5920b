"""The C byte writers of encode_c.py's line builder: COPY's escapes, a JSON string's plain case, SHIFT's
decimal point, a position's digits, MySQL's quoted literals, and whether a numeric's text is str() of its
Decimal. C functions only (cbytes.pxd declares them for `cimport`): compiled, encode_c.py calls them through
the pointers Cython imports from this extension module, with no Python object in between; interpreted, nothing
calls them (encode_c.py then runs encode.py and encode_mysql.py).

Each writer puts its bytes at o[at:] and returns the new end, or -1 when they would not fit in CAP bytes (or
`at` is -1 already: one check of the last one's result covers a line). encode_c.py's `_sep` and `_put` (inline
there) follow the same rule.
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # interpreted without Cython: its declarations are no-ops
    from cdc import cython_shim as cython

CAP = 16384  # bytes a line and its entry may take in the buffer (encode_c.py hands a longer one to encode.py)
_CAP = cython.declare(cython.Py_ssize_t, CAP)  # compiled: a C integer, no Python int in each check


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(
    o=cython.p_uchar,
    at=cython.Py_ssize_t,
    s=cython.p_uchar,
    ln=cython.Py_ssize_t,
    k=cython.Py_ssize_t,
    c=cython.uchar,
)
def put_escaped(o, at, s, ln):
    """s[:ln] escaped for COPY's text format (encode.copy_text: backslash, and \\b \\t \\n \\v \\f \\r)."""
    if at < 0 or at + 2 * ln > _CAP:
        return -1
    for k in range(ln):
        c = s[k]
        if c == 92 or (c >= 8 and c <= 13):
            o[at] = 92
            if c == 8:
                c = 98  # b
            elif c == 9:
                c = 116  # t
            elif c == 10:
                c = 110  # n
            elif c == 11:
                c = 118  # v
            elif c == 12:
                c = 102  # f
            elif c == 13:
                c = 114  # r
            at += 1
        o[at] = c
        at += 1
    return at


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(
    o=cython.p_uchar,
    at=cython.Py_ssize_t,
    s=cython.p_uchar,
    ln=cython.Py_ssize_t,
    k=cython.Py_ssize_t,
    c=cython.uchar,
)
def put_json(o, at, s, ln):
    """s[:ln] inside a JSON string, when it needs no escape (encode.json_text's plain case); else -1."""
    if at < 0 or at + ln > _CAP:
        return -1
    for k in range(ln):
        c = s[k]
        if c < 32 or c == 34 or c == 92 or c >= 127:
            return -1
        o[at + k] = c
    return at + ln


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(
    o=cython.p_uchar,
    at=cython.Py_ssize_t,
    s=cython.p_uchar,
    ln=cython.Py_ssize_t,
    shift=cython.Py_ssize_t,
    nzeros=cython.Py_ssize_t,
    neg=cython.bint,
    nonzero=cython.bint,
    pad=cython.Py_ssize_t,
    total=cython.Py_ssize_t,
    k=cython.Py_ssize_t,
)
def put_shifted(o, at, s, ln, shift, nzeros):
    """An integer's text with its decimal point moved `shift` places left, then `nzeros` zeros: encode.shifted.
    An empty text (which PostgreSQL never sends): -1, so that encode.shifted says what it makes of it."""
    if at < 0 or ln == 0 or at + ln + shift + nzeros + 3 > _CAP:
        return -1
    neg = s[0] == 45  # '-'
    if neg:
        s += 1
        ln -= 1
    nonzero = False
    for k in range(ln):
        if s[k] != 48:
            nonzero = True
            break
    if neg and nonzero:
        o[at] = 45
        at += 1
    pad = shift + 1 - ln if shift and ln <= shift else 0  # zeros before the digits: one before the point
    total = pad + ln
    for k in range(total):
        if shift and k == total - shift:
            o[at] = 46  # '.'
            at += 1
        o[at] = 48 if k < pad else s[k - pad]
        at += 1
    if nzeros and not shift:
        o[at] = 46
        at += 1
    for k in range(nzeros):
        o[at + k] = 48
    return at + nzeros


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(o=cython.p_uchar, at=cython.Py_ssize_t, v=cython.ulonglong, k=cython.Py_ssize_t)
def put_digits(o, at, v):
    """A position's decimal digits (b"%d" % v)."""
    tmp = cython.declare(cython.uchar[24])
    if at < 0 or at + 20 > _CAP:
        return -1
    k = 0
    while True:
        tmp[k] = 48 + v % 10
        v //= 10
        k += 1
        if v == 0:
            break
    while k > 0:
        k -= 1
        o[at] = tmp[k]
        at += 1
    return at


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.Py_ssize_t)
@cython.locals(
    o=cython.p_uchar,
    at=cython.Py_ssize_t,
    s=cython.p_uchar,
    ln=cython.Py_ssize_t,
    nbe=cython.bint,
    k=cython.Py_ssize_t,
    c=cython.uchar,
)
def put_quoted(o, at, s, ln, nbe):
    """s[:ln] as a quoted MySQL string literal: pymysql's escape_string (encode_mysql.mysql_text: NUL, \\n,
    \\r, ^Z, quotes and backslash escaped) or, `nbe` (NO_BACKSLASH_ESCAPES), with its single quotes doubled."""
    if at < 0 or at + 2 * ln + 2 > _CAP:
        return -1
    o[at] = 39
    at += 1
    for k in range(ln):
        c = s[k]
        if nbe:
            if c == 39:
                o[at] = 39
                at += 1
        elif c == 0 or c == 10 or c == 13 or c == 26 or c == 39 or c == 34 or c == 92:
            o[at] = 92
            at += 1
            if c == 0:
                c = 48  # 0
            elif c == 10:
                c = 110  # n
            elif c == 13:
                c = 114  # r
            elif c == 26:
                c = 90  # Z
        o[at] = c
        at += 1
    o[at] = 39
    return at + 1


@cython.cfunc
@cython.exceptval(check=False)
@cython.returns(cython.bint)
@cython.locals(s=cython.p_uchar, ln=cython.Py_ssize_t, at=cython.Py_ssize_t, k=cython.Py_ssize_t)
def is_plain_number(s, ln):
    """Whether a numeric's text is str() of its Decimal (encode_mysql.py's NUMBER): digits first (not NaN or
    Infinity), and not 0.000000 followed by more (below 1E-6, where str() writes an exponent)."""
    at = 1 if ln and s[0] == 45 else 0
    if at >= ln or s[at] < 48 or s[at] > 57:
        return False
    if ln > at + 8 and s[at] == 48 and s[at + 1] == 46:
        for k in range(at + 2, at + 8):
            if s[k] != 48:
                return True
        return False
    return True
