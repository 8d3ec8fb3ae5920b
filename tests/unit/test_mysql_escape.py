"""The MariaDB sink's literal escaping (cdc.sinks.sql.mysql_merge._mysql_escaper) is pymysql's, with fast paths."""

from __future__ import annotations

from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymysql.constants import SERVER_STATUS
from pymysql.converters import escape_item, escape_string

from cdc.errors import HoldError
from cdc.sinks.sql.mysql_merge import (
    NotFinite,
    _bytes_literal,
    _mysql_escaper,
    _mysql_text,
    _not_storable,
    _parts,
    fast_form,
)
from cdc.sinks.sql.storefront import is_row_error


def escaper(no_backslash_escapes: bool = False):
    status = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES if no_backslash_escapes else 0
    # the attributes of a pymysql connection the escaper reads
    return _mysql_escaper(SimpleNamespace(server_status=status, escape=lambda v: escape_item(v, "utf8mb4")))


@given(st.text())
def test_strings_escape_as_pymysql_does(s):
    assert escaper()(s) == "'" + escape_string(s) + "'"


@given(st.text())
def test_without_backslash_escapes_only_quotes_double(s):
    assert escaper(True)(s) == "'" + s.replace("'", "''") + "'"


def test_other_types():
    esc = escaper()
    assert esc(None) == "NULL" and esc(5) == "5" and esc(Decimal("-1.50")) == "-1.50"
    assert esc(b"\x00'") == escape_item(b"\x00'", "utf8mb4")


def test_long_text_goes_as_hex():
    assert _mysql_text('["a\'b", 1]') == "CONVERT(X'5b22612762222c20315d' USING utf8mb4)"


def test_the_fast_path_form_follows_the_session():
    """The fast path's literals are UTF-8 and escaped for the session's sql_mode (cdc/fast/encode_mysql.py)."""
    no_bs = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
    assert fast_form(SimpleNamespace(encoding="utf8", charset="utf8mb4", server_status=0)) == ("mysql", None)
    assert fast_form(SimpleNamespace(encoding="utf8", charset="utf8mb4", server_status=no_bs)) == (
        "mysql-nbe",
        None,
    )
    form, why = fast_form(SimpleNamespace(encoding="latin1", charset="latin1", server_status=0))
    assert form is None and "latin1" in why


def test_bytes_literals_hold_any_text():
    assert _bytes_literal(b'["SKU-1",1,2,3,4,"u",null]') == b'\'["SKU-1",1,2,3,4,"u",null]\''
    assert _bytes_literal(b"it's \\") == b"CONVERT(X'69742773205c' USING utf8mb4)"


@given(st.lists(st.binary(min_size=0, max_size=30), max_size=40), st.integers(1, 100))
def test_statement_parts_keep_order_and_budget(items, budget):
    parts = list(_parts(items, budget))
    assert [x for p in parts for x in p] == items
    assert all(p and (len(p) == 1 or sum(map(len, p)) <= budget) for p in parts)
    # (greedy: the next item would not have fitted)
    for p, q in zip(parts, parts[1:], strict=False):
        assert sum(map(len, p)) + len(q[0]) > budget


def test_numbers_mariadb_cannot_store_are_refused_not_sent():
    """MariaDB has no NaN or infinity: pymysql would send a Decimal NaN as the name NaN (an unknown column, which
    would stop the connector) and fails on a float one; the writer dead-letters the row instead (its bisection
    takes the HoldError _not_storable makes as a row error)."""
    esc = escaper()
    for v in (Decimal("NaN"), Decimal("-Infinity"), Decimal("sNaN"), float("nan"), float("inf")):
        with pytest.raises(NotFinite):
            esc(v)
    assert esc(Decimal("1.50")) == "1.50" and esc(2.5) == escape_item(2.5, "utf8mb4")  # (pymysql's as ever)
    err = _not_storable({"sku": "A", "weight": Decimal("NaN")}, ["sku", "weight"])
    assert isinstance(err, HoldError) and is_row_error(err)
    assert str(err).startswith("weight is NaN, which MariaDB/MySQL cannot store")
