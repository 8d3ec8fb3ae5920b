"""The PostgreSQL sink's COPY text of datetimes (cdc.sinks.sql.pg_merge._CopyDatetimeDumper): str() as psycopg's
own dumper, and its memory of the last value never hands one datetime's text to another."""

from __future__ import annotations

import datetime as dt

from cdc.sinks.sql.pg_merge import _CopyDatetimeDumper

UTC = dt.UTC
PLUS2 = dt.timezone(dt.timedelta(hours=2))


def test_text_is_str_of_the_value():
    d = _CopyDatetimeDumper(dt.datetime)
    for v in (
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        dt.datetime(2024, 5, 6, 7, 8, 9),
        dt.datetime(1, 1, 1, tzinfo=PLUS2),
    ):
        assert d.dump(v) == str(v).encode()


def test_repeated_values_reuse_the_text_and_others_get_their_own():
    d = _CopyDatetimeDumper(dt.datetime)
    a = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert d.dump(a) == b"2024-05-06 07:08:09+00:00"
    assert d.dump(dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)) == b"2024-05-06 07:08:09+00:00"  # equal value
    # the same instant in another offset is another text (a timestamp column ignores the offset)
    assert d.dump(a.astimezone(PLUS2)) == b"2024-05-06 09:08:09+02:00"
    assert d.dump(dt.datetime(2024, 5, 6, 7, 8, 9)) == b"2024-05-06 07:08:09"  # naive: no offset
    assert d.dump(a) == b"2024-05-06 07:08:09+00:00"
