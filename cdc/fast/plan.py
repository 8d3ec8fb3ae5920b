"""How a source table's columns reach the storefront row through the stages: a `RelationPlan` for the encoder.

Each of the relation's columns is followed through the stages in order, as the stages would move a row's
values: `rename` renames it (two names landing on one: no plan, the reference path holds those changes),
`drop` removes it, `money` marks it for that stage's rounding (on a column that is not an integer or numeric,
or is missing: no plan). What is left is the row the sink would get; its storefront columns, in the
storefront's order, are the plan's slots. A value goes as PostgreSQL sent it only where the reference path
would write a value the storefront reads the same: text and integers anywhere, numeric into a number
column, dates and times into date and time columns, booleans into booleans, and so on (`_how`); anything
else gives no plan, and that table's changes take the reference path.

The form of the rows: "copy", the PostgreSQL staging table's COPY lines (encode.py); "mysql" or "mysql-nbe",
a MariaDB/MySQL storefront's VALUES tuples (encode_mysql.py; "-nbe": the session has NO_BACKSLASH_ESCAPES),
whose literals are the reference path's own, whatever the storefront column's type (`_how_mysql`);
"pg-values", a PostgreSQL storefront's VALUES tuples for short runs (the single sale: the upsert goes into the
storefront table with its commit in one round trip, no staging), encoded as "mysql-nbe" is: each value the
text PostgreSQL sent, quoted (an untyped literal, which the column's type parses as it parses COPY text; the
storefront session has standard_conforming_strings on), money columns' values bare (`_how_pg_values`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc.fast.encode import CHECK, MONEY, PASS, SHIFT, TEXT
from cdc.fast.encode_mysql import BOOL, DATETIME, NUMBER, TEXT_NBE
from cdc.stages.drop import DropStage
from cdc.stages.money import MoneyStage
from cdc.stages.rename import RenameStage

FAST_STAGES = (RenameStage, DropStage, MoneyStage)

# PostgreSQL type OIDs by how their text form compares with what the reference path writes
TEXT_TYPES = frozenset((25, 1043, 1042, 19, 18, 114, 3802))  # text varchar bpchar name "char" json jsonb
INT_TYPES = frozenset((20, 21, 23, 26))  # int8 int2 int4 oid: str(int) is PostgreSQL's text
UUID, NUMERIC, BOOL_OID, DATE, TIMESTAMP, TIMESTAMPTZ = 2950, 1700, 16, 1082, 1114, 1184
KEY_TYPES = frozenset((25, 1043, 1042, 19, *INT_TYPES))  # the sink's key text is the value's text


@dataclass(frozen=True, slots=True)
class RelationPlan:
    ncols: int  # the relation's columns (a message with another count goes the reference way)
    cols: list[str]  # the storefront columns written, in the staging table's order
    slots: tuple  # per storefront column: (source column index, PASS | TEXT | MONEY | SHIFT, its arguments),
    # then (source column index, CHECK, conversions) per money column the storefront lacks
    key_index: tuple  # the source columns of the storefront key, in its order


FORMS = ("copy", "mysql", "mysql-nbe", "pg-values")


def plan_relation(rel: Any, stages: list, target: Any, form: str = "copy") -> tuple[RelationPlan | None, str]:
    """The plan for a pgoutput Relation, for rows of `form` (None, and why not)."""
    if rel.replica_identity == "f":
        return None, "REPLICA IDENTITY FULL sends every update with its old row"
    row: dict[str, tuple[int, tuple]] = {c.name: (i, ()) for i, c in enumerate(rel.columns)}
    checks: list[tuple] = []  # money conversions whose column is not written
    for st in stages:
        if isinstance(st, RenameStage):
            m = st._map
            renamed = {m.get(k, k): v for k, v in row.items()}
            if len(renamed) != len(row):
                return None, f"{st.name} renames two columns to one name"
            row = renamed
        elif isinstance(st, DropStage):
            for f in st._fields:
                src, convs = row.pop(f, (0, ()))
                if convs:  # converted before it was dropped: its holds still hold
                    checks.append((src, CHECK, convs))
        elif isinstance(st, MoneyStage):
            if st.field not in row:
                return None, f"{st.name}: {st.field} is not a column of the row"
            src, convs = row[st.field]
            if rel.columns[src].type_oid not in INT_TYPES and rel.columns[src].type_oid != NUMERIC:
                return None, f"{st.name}: {st.field} is not an integer or numeric column"
            row[st.field] = (src, (*convs, st.scaled))
        else:
            return None, f"{st.name} needs each change as a row"
    if target.table is None:
        return None, "the storefront table does not exist yet"
    for k in target.key_cols:
        if k not in row:
            return None, f"the key column {k} is not in the row"
        src, convs = row[k]
        if convs or rel.columns[src].type_oid not in KEY_TYPES:
            return None, f"the key column {k} is not a text or integer column as sent"
    cols = target.write_columns(tuple(row))
    slots = []
    for c in cols:
        src, convs = row[c]
        type_oid = rel.columns[src].type_oid
        if form == "pg-values":
            how = _how_pg_values(type_oid, target.table.c[c].type, bool(convs))
        elif convs:
            how = MONEY
        elif form == "copy":
            how = _how(type_oid, target.table.c[c].type)
        else:
            how = _how_mysql(type_oid, form)
        if how is None:
            return None, f"{c}: its {type_oid} values are written as Python would write them"
        shift = _shift(rel.columns[src].type_oid, convs)
        slots.append((src, SHIFT, shift) if shift else (src, how, convs))
    # a money stage's column the storefront lacks is still converted (a value it cannot take holds the change)
    slots += checks + [(src, CHECK, convs) for c, (src, convs) in row.items() if convs and c not in cols]
    key_index = tuple(row[k][0] for k in target.key_cols)
    return RelationPlan(len(rel.columns), cols, tuple(slots), key_index), ""


def _shift(type_oid: int, convs: tuple) -> tuple[int, bytes] | None:
    """(shift, zeros) when one money stage only moves an integer's decimal point (divide_by a power of ten up
    to its scale, scale at most 6, where str() of the Decimal has no exponent); None otherwise."""
    if type_oid not in INT_TYPES or len(convs) != 1:
        return None
    stage = convs[0].__self__  # MoneyStage.scaled, bound
    shift, scale = stage._shift, stage._scale
    if shift is None or shift < 0 or shift > scale or scale > 6:
        return None
    return shift, b"0" * (scale - shift)


def _how(type_oid: int, target_type: sa.types.TypeEngine) -> int | None:
    """How a source column's text goes into a storefront column: PASS (as sent), TEXT (escaped), or None
    (the reference path would write other text than PostgreSQL's, and the storefront may read it otherwise)."""
    if type_oid in TEXT_TYPES:
        return TEXT
    if type_oid in INT_TYPES or type_oid == UUID:
        return PASS
    if type_oid == NUMERIC:  # str(Decimal) may differ in form (1E-7): only where a number is read
        return None if isinstance(target_type, sa.String) else PASS
    if type_oid == DATE:
        return PASS if isinstance(target_type, sa.Date) else None
    if type_oid in (TIMESTAMP, TIMESTAMPTZ):
        return PASS if isinstance(target_type, sa.DateTime) else None
    if type_oid == BOOL_OID:
        return PASS if isinstance(target_type, sa.Boolean) else None
    return None


def _how_pg_values(type_oid: int, target_type: sa.types.TypeEngine, money: bool) -> int | None:
    """How a source column's text goes into a PostgreSQL VALUES tuple: where it may go as it was sent (`_how`),
    quoted (TEXT_NBE: an untyped literal, parsed by the column's type as COPY text is); a money stage's Decimal
    bare (a numeric literal) only into a numeric column, where the assignment rounds it as the column's input
    would round its text (into an integer column the text would be refused, and the number rounded)."""
    if money:
        exact = isinstance(target_type, sa.Numeric) and not isinstance(target_type, sa.Float)
        return MONEY if exact else None
    return None if _how(type_oid, target_type) is None else TEXT_NBE


def _how_mysql(type_oid: int, form: str) -> int | None:
    """How a source column's text becomes the literal pymysql makes of the reference path's value (see
    encode_mysql.py); None: no literal made from the text is sure to be that one (a float's repr, a time,
    bytes, an interval, an array...)."""
    if type_oid in TEXT_TYPES or type_oid in (UUID, DATE):
        return TEXT_NBE if form == "mysql-nbe" else TEXT
    if type_oid in INT_TYPES:
        return PASS
    return {NUMERIC: NUMBER, BOOL_OID: BOOL, TIMESTAMP: DATETIME, TIMESTAMPTZ: DATETIME}.get(type_oid)
