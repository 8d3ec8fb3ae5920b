"""How the PostgreSQL sink empties its staging table before a group goes in (PgMerge._empty_stage)."""

from cdc.sinks.sql.pg_merge import PgMerge


def test_the_staging_table_is_emptied_by_delete_and_truncated_only_now_and_then():
    m = PgMerge(target=None, connector="c")
    assert m._empty_stage(1) is None  # a new session's table is empty
    assert m._empty_stage(1) == b"DELETE FROM cdc_stage"  # what the last group left
    assert m._empty_stage(5000) == b"DELETE FROM cdc_stage"
    assert m._empty_stage(3) == b"TRUNCATE cdc_stage"  # after a large group
    deletes = 0
    while m._empty_stage(m.BIG) == b"DELETE FROM cdc_stage":
        deletes += 1
    assert deletes == 20  # deleted rows piled up: truncated once 20 x BIG of them would be dead
    m._empty_stage(1)
    m.forget_stage()  # a rollback may have undone a truncate: the table's content is not known
    assert m._empty_stage(1) == b"TRUNCATE cdc_stage"
    assert m._empty_stage(1) == b"DELETE FROM cdc_stage"


def test_a_small_write_sends_its_values_as_untyped_literals():
    import datetime as dt
    from decimal import Decimal
    from uuid import UUID

    from cdc.sinks.sql.pg_merge import _literal_row

    row = (
        None,
        "O'Brien",
        "back\\slash",
        Decimal("12.30"),
        7,
        True,
        b"\x00\xff",
        dt.datetime(2026, 11, 30, 1, 2, 3, tzinfo=dt.UTC),
        UUID(int=1),
    )
    assert _literal_row(row, mogrify=None) == (
        "(NULL, 'O''Brien', E'back\\\\slash', '12.30', '7', 'True', E'\\\\x00ff', "
        "'2026-11-30 01:02:03+00:00', '00000000-0000-0000-0000-000000000001')"
    )
    assert _literal_row(([1, 2],), mogrify=lambda q, p: f"<{p[0]}>") == "(<[1, 2]>)"  # others: psycopg's
