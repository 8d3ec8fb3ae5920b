"""Column values of pgoutput's text format -> Python, by type OID (see cdc/sources/pgoutput.py for the table of
types; the replication session has DateStyle=ISO, IntervalStyle=postgres and extra_float_digits=3)."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

# Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01 (both UTC).
_PG_EPOCH_OFFSET_US = 946_684_800_000_000


def pg_epoch_us_to_unix_ms(us: int) -> int:
    """A PostgreSQL TimestampTz (µs since 2000-01-01 UTC) -> ms since 1970-01-01 UTC (floored)."""
    return (us + _PG_EPOCH_OFFSET_US) // 1000


# --------------------------------------------------------------------------------------------------------
# Text-format value converters
# --------------------------------------------------------------------------------------------------------

_date_fromiso = dt.date.fromisoformat
_time_fromiso = dt.time.fromisoformat
_datetime_fromiso = dt.datetime.fromisoformat

# The fallback parser: ISO date, optional time, optional fraction (any digits, first 6 kept), optional
# offset as +HH, +HH:MM or +HH:MM:SS.
_DT_RE = re.compile(
    r"(?:(?P<y>\d{4,})-(?P<mo>\d\d)-(?P<d>\d\d))?"
    r"[ T]?"
    r"(?:(?P<h>\d\d):(?P<mi>\d\d)(?::(?P<s>\d\d)(?:\.(?P<f>\d+))?)?)?"
    r"(?:(?P<sign>[+-])(?P<oh>\d\d)(?::?(?P<om>\d\d))?(?::?(?P<os>\d\d))?)?"
    r"\Z"
)
_SPECIAL_DATES = frozenset(("infinity", "-infinity"))


def _parse_datetime_fallback(text: str, want: str) -> Any:
    """Slow path for date/time text that `fromisoformat` refused. `want` is 'date', 'time' or 'datetime'.

    Values Python cannot represent (infinities, BC, year > 9999, 24:00:00) are returned as the str sent.
    """
    if text in _SPECIAL_DATES or text.endswith(" BC"):
        return text
    m = _DT_RE.match(text)
    has_date = m is not None and m["y"] is not None
    has_time = m is not None and m["h"] is not None
    shape_ok = has_date == (want != "time") and has_time == (want != "date")
    if m is None or not shape_ok or (m["sign"] and not has_time):
        raise ValueError(f"not a PostgreSQL ISO {want}: {text!r}")
    if has_date and int(m["y"]) > 9999:
        return text
    if has_time and int(m["h"]) == 24:
        return text
    tz = None
    if m["sign"]:
        secs = int(m["oh"]) * 3600 + int(m["om"] or 0) * 60 + int(m["os"] or 0)
        tz = dt.timezone(dt.timedelta(seconds=-secs if m["sign"] == "-" else secs))
    if want == "date":
        return dt.date(int(m["y"]), int(m["mo"]), int(m["d"]))
    hms = (int(m["h"]), int(m["mi"]), int(m["s"] or 0), int((m["f"] or "0")[:6].ljust(6, "0")))
    if want == "time":
        return dt.time(*hms, tzinfo=tz)
    return dt.datetime(int(m["y"]), int(m["mo"]), int(m["d"]), *hms, tzinfo=tz)


def _to_date(text: str) -> Any:
    try:
        return _date_fromiso(text)
    except ValueError:
        return _parse_datetime_fallback(text, "date")


def _to_time(text: str) -> Any:
    try:
        return _time_fromiso(text)
    except ValueError:
        return _parse_datetime_fallback(text, "time")


def _to_datetime(text: str) -> Any:
    try:
        return _datetime_fromiso(text)
    except ValueError:
        return _parse_datetime_fallback(text, "datetime")


_BOOL_TEXT = {"t": True, "f": False, "true": True, "false": False}


def _to_bool(text: str) -> bool:
    try:
        return _BOOL_TEXT[text]
    except KeyError:
        raise ValueError(f"not a PostgreSQL bool: {text!r}") from None


_BYTEA_ESCAPE_RE = re.compile(r"\\(\\|[0-3][0-7][0-7])")


def _to_bytes(text: str) -> bytes:
    """bytea text output: hex ('\\x0a1b...', the default) or the old escape format."""
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    pieces = _BYTEA_ESCAPE_RE.split(text)  # odd items are the escapes, without the backslash
    out = bytearray()
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(92 if piece == "\\" else int(piece, 8))
        elif "\\" in piece:
            raise ValueError(f"bad bytea escape in {text!r}")
        else:
            out += piece.encode("latin-1")
    return bytes(out)


_INT = int
_TEXT = str

Converter = Callable[[str], Any]

# type OID -> converter of the text output form
CONVERTERS: dict[int, Converter] = {
    16: _to_bool,  # bool
    17: _to_bytes,  # bytea
    18: _TEXT,  # "char"
    19: _TEXT,  # name
    20: _INT,  # int8
    21: _INT,  # int2
    23: _INT,  # int4
    25: _TEXT,  # text
    26: _INT,  # oid
    114: _TEXT,  # json
    700: float,  # float4
    701: float,  # float8
    1042: _TEXT,  # bpchar
    1043: _TEXT,  # varchar
    1082: _to_date,  # date
    1083: _to_time,  # time
    1114: _to_datetime,  # timestamp
    1184: _to_datetime,  # timestamptz
    1266: _to_time,  # timetz
    1700: Decimal,  # numeric: exact, and 'NaN'/'Infinity'/'-Infinity' are understood by Decimal
    2950: uuid.UUID,  # uuid
    3802: _TEXT,  # jsonb
}


def converter_for(type_oid: int) -> Converter:
    """The text -> Python converter for a type OID (str, i.e. the text as sent, for unknown types)."""
    return CONVERTERS.get(type_oid, _TEXT)
