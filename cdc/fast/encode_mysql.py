"""The fast path's inner loop for a MariaDB/MySQL storefront: pgoutput Insert/Update messages -> the VALUES
tuples of the multi-row INSERT … ON DUPLICATE KEY UPDATE that the sink sends (cdc/sinks/sql/mysql_merge.py).

The reference path writes a MariaDB row as the literals pymysql makes of the decoded values
(mysql_merge._mysql_escaper: a str quoted and escaped, an int or a finite Decimal as str(), None as NULL, the
rest by pymysql's encoders). Here each literal is made from the text PostgreSQL sent, and it is the same
literal, byte for byte (tests/unit/test_fast_encode.py checks it on random values):

  PASS      an integer: its text, unquoted (str(int) is PostgreSQL's text)
  TEXT      text, varchar, json, a date, a uuid: quoted, escaped as pymysql's escape_string escapes
            (`\\0 \\n \\r \\Z \\' \\" \\\\`; byte for byte on UTF-8, whose multi-byte sequences hold no ASCII);
            pymysql writes a date as 'YYYY-MM-DD' and a uuid as str(UUID), PostgreSQL's own text
  TEXT_NBE  the same where the session has NO_BACKSLASH_ESCAPES: only quotes doubled
  NUMBER    numeric: its text, unquoted, where str(Decimal(text)) is that text (not below 1E-6, where str()
            turns to an exponent; not NaN or Infinity): else the reference way
  BOOL      't' / 'f' -> 1 / 0 (pymysql's escape_bool)
  DATETIME  timestamp and timestamptz: pymysql writes a datetime as 'YYYY-MM-DD HH:MM:SS[.ffffff]' (six
            digits of fraction when there is one, the offset dropped: the replication session's TimeZone is
            UTC); other forms (infinity, BC, a year past 9999) the reference way
  MONEY, SHIFT, CHECK  as cdc/fast/encode.py: str() of the money stages' Decimal, unquoted

Only the lean form: each key's position goes to `entries` as its cdc_applied entry (JSON), as in encode.py's
lean lines; the caller sends changes at or below the stored position the reference way.

The parsing of the new tuple is encode.py's loop, repeated here so that each loop stays one compiled function.
This module is compiled by Cython when a compiler is there (cdc/hotpath.py lists it).
"""

from __future__ import annotations

import re

from cdc.fast.encode import (
    _JSON_SPECIAL,
    CHECK,
    MONEY,
    PASS,
    SHIFT,
    TEXT,
    converted,
    json_text,
    read_tuple,
    shifted,
)

try:
    import cython
except ImportError:  # interpreted without Cython: its declarations are no-ops
    from cdc import cython_shim as cython

BOOL, DATETIME, NUMBER, TEXT_NBE = 5, 6, 7, 8

# ISO date and time, a fraction of up to 6 digits, an offset (+HH[:MM[:SS]], left out by pymysql)
_DATETIME = re.compile(rb"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(?:[+-]\d\d(?::\d\d(?::\d\d)?)?)?")
_SPECIAL = re.compile(b"[\x00\n\r\x1a'\"\\\\]")  # what pymysql's escape_string changes
_ESCAPES = {
    b"\x00": b"\\0",
    b"\n": b"\\n",
    b"\r": b"\\r",
    b"\x1a": b"\\Z",
    b"'": b"\\'",
    b'"': b'\\"',
    b"\\": b"\\\\",
}


def _escape_match(m: re.Match) -> bytes:
    return _ESCAPES[m.group(0)]


def mysql_text(value: bytes) -> bytes:
    """`value` (UTF-8) as a quoted MySQL string literal, escaped as pymysql escapes a str."""
    if _SPECIAL.search(value) is None:
        return b"'" + value + b"'"
    return b"'" + _SPECIAL.sub(_escape_match, value) + b"'"


def mysql_text_nbe(value: bytes) -> bytes:
    """The same for a session with NO_BACKSLASH_ESCAPES (mysql_merge._mysql_escaper): quotes doubled."""
    return b"'" + value.replace(b"'", b"''") + b"'"


def mysql_datetime(v: bytes) -> bytes | None:
    """PostgreSQL's ISO text of a timestamp or timestamptz -> the literal pymysql makes of the datetime the
    reference path decodes it to; None for another form (infinity, BC, a year past 9999, anything else)."""
    m = _DATETIME.fullmatch(v)
    if m is None:
        return None
    frac = m.group(2)
    if frac is not None and frac.strip(b"0"):
        return b"'" + m.group(1) + b"." + frac + b"0" * (6 - len(frac)) + b"'"
    return b"'" + m.group(1) + b"'"


@cython.locals(
    n=cython.Py_ssize_t,
    i=cython.Py_ssize_t,
    end=cython.Py_ssize_t,
    ncols=cython.Py_ssize_t,
    at=cython.Py_ssize_t,
    buf=bytes,
    v=bytes,
    key=bytes,
    last=bytes,
    c=cython.uchar,
    plain=cython.bint,
)
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
    entries: dict,
) -> int:
    """Encodes `payloads[start:]` into `lines` (key text -> b"(<literal>,...)"; a later change of a key
    replaces the earlier one) and `entries` (key text -> its cdc_applied entry: b'["<key>' + mid + <the change's
    LSN> + tail) until a message it cannot encode; returns that message's index (len(payloads): all were).

    `ncols`: the relation's column count; `slots`: per storefront column, (source column index, one of the
    kinds above, the money conversions or SHIFT's (shift, zeros)), then CHECK slots, written nowhere;
    `key_index`: the source columns of the storefront key, in its order; `mid`: b'",<commit lsn>,'; `tail`:
    b',<commit time>,<xid>,"u",null]'.
    """
    n = len(payloads)
    i = start
    vals = [None] * ncols
    special, json_special = _SPECIAL.search, _JSON_SPECIAL.search
    while i < n:
        buf = payloads[i]
        key = read_tuple(buf, ncols, vals, key_index)
        if key is None:
            return i
        # the tuple's pieces, joined once: each value's literal, then "," (the last one: ")")
        out = [b"("]
        for src, how, convs in slots:
            v = vals[src]
            if v is None:
                if how != CHECK:
                    out.append(b"NULL,")
            elif how == TEXT:  # (mysql_text, inline: no call, no concatenation)
                if cython.compiled:  # a C loop over the bytes
                    plain = True
                    for c in v:
                        if c == 39 or c == 92 or c == 34 or c == 10 or c == 13 or c == 0 or c == 26:
                            plain = False
                            break
                else:
                    plain = special(v) is None
                out.append(b"'")
                out.append(v if plain else _SPECIAL.sub(_escape_match, v))
                out.append(b"',")
            elif how == PASS:
                out.append(v)
                out.append(b",")
            elif how == NUMBER:
                end = len(v)
                at = 1 if end and v[0] == 45 else 0  # where the digits start ('-')
                if at >= end or v[at] < 48 or v[at] > 57:  # NaN, Infinity
                    return i
                if end > at + 8 and v[at] == 48 and v.startswith(b"0.000000", at):  # below 1E-6: str()
                    return i  # writes an exponent
                out.append(v)
                out.append(b",")
            elif how == DATETIME:
                v = mysql_datetime(v)
                if v is None:
                    return i
                out.append(v)
                out.append(b",")
            elif how == BOOL:
                if v == b"t":
                    out.append(b"1,")
                elif v == b"f":
                    out.append(b"0,")
                else:
                    return i
            elif how == TEXT_NBE:
                out.append(mysql_text_nbe(v))
                out.append(b",")
            elif how == SHIFT:
                out.append(shifted(v, convs[0], convs[1]))
                out.append(b",")
            else:
                d = converted(v, convs)
                if d is None:
                    return i
                if how == MONEY:
                    out.append(str(d).encode("ascii"))
                    out.append(b",")
        if len(out) > 1:
            last = out[len(out) - 1]
            out[len(out) - 1] = last[: len(last) - 1] + b")"  # (its "," ends the tuple)
        else:
            out.append(b")")
        # the key as the inside of a JSON string (json_text, inline where nothing needs escaping)
        if cython.compiled:
            plain = True
            for c in key:
                if c < 32 or c == 34 or c == 92 or c > 126:
                    plain = False
                    break
        else:
            plain = json_special(key) is None
        k = key if plain else json_text(key)
        if k is None:
            return i
        lines[key] = b"".join(out)
        entries[key] = b"".join((b'["', k, mid, b"%d" % lsns[i], tail))
        i += 1
    return i
