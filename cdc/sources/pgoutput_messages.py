"""The messages of PostgreSQL's pgoutput logical replication protocol, as cdc/sources/pgoutput.py decodes them
(one dataclass per message type; see the PostgreSQL docs, "Logical Replication Message Formats")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from cdc.sources.pg_values import Converter, converter_for


class Column(NamedTuple):
    name: str
    type_oid: int
    typmod: int
    is_key: bool


@dataclass(slots=True)
class Relation:
    """A table as the Relation message describes it.

    `key_columns` are the columns flagged as part of the replica identity (with REPLICA IDENTITY FULL,
    PostgreSQL flags every column). `key_columns` and `converters` are derived from `columns` when not given.
    `names` and `cols` (name, converter pairs) are caches for the tuple decoder, built once at construction
    (replace the Relation rather than mutate `converters`).
    """

    oid: int
    schema: str  # as sent: the empty string stands for pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: list[Column]
    key_columns: tuple[str, ...] = None  # type: ignore[assignment]
    converters: list[Converter] = None  # type: ignore[assignment]
    names: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)
    cols: tuple[tuple[str, Converter], ...] = field(default=(), init=False, repr=False, compare=False)
    # column -> (type OID, typmod), shared by the relation's events (ChangeEvent.types)
    types: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key_columns is None:
            self.key_columns = tuple(c.name for c in self.columns if c.is_key)
        if self.converters is None:
            self.converters = [converter_for(c.type_oid) for c in self.columns]
        if len(self.converters) != len(self.columns):
            raise ValueError(
                f"relation {self.schema}.{self.name}: {len(self.converters)} converters "
                f"for {len(self.columns)} columns"
            )
        self.names = tuple(c.name for c in self.columns)
        self.types = {c.name: (c.type_oid, c.typmod) for c in self.columns}
        self.cols = tuple(zip(self.names, self.converters, strict=True))


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int  # µs since 2000-01-01 UTC, as sent; see pg_epoch_us_to_unix_ms
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(slots=True)
class Origin:
    lsn: int
    name: str


@dataclass(slots=True)
class TypeMsg:
    oid: int
    schema: str
    name: str


@dataclass(slots=True)
class Insert:
    relation: Relation
    new: dict


@dataclass(slots=True)
class Update:
    relation: Relation
    old: dict | None
    old_kind: str | None  # 'K' key columns only, 'O' the full old row, None: no old row sent
    new: dict
    toasted: bool = False  # `new` holds UNCHANGED_TOAST values


@dataclass(slots=True)
class Delete:
    relation: Relation
    old: dict
    old_kind: str  # 'K' or 'O'


@dataclass(slots=True)
class Truncate:
    relations: list[Relation]
    cascade: bool
    restart_identity: bool


@dataclass(slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Begin | Commit | Origin | Relation | TypeMsg | Insert | Update | Delete | Truncate | LogicalMessage
