"""How the PostgreSQL sink empties its staging table before a group goes in (PgMerge._empty_stage)."""

from cdc.sinks.dialects import PgMerge


def test_the_staging_table_is_emptied_by_delete_and_truncated_only_now_and_then():
    m = PgMerge(sink=None)
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
