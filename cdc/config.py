"""Connector config: YAML with line numbers, ${VAR} interpolation, pydantic models with extra="forbid".

Every problem is reported as `FILE:LINE: field.path: message`, all of them at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cdc.config_base import Strict
from cdc.config_kafka import KafkaSink, KafkaSource
from cdc.config_vars import expand
from cdc.errors import ConfigError
from cdc.secrets import remember_secrets_of
from cdc.stages import StageConfig
from cdc.stages.lineage import pick_fallback_problems

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _ident(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def _qualified(table: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w$]*\.[A-Za-z_][\w$]*", table):
        raise ValueError(f"{table!r} must be schema-qualified, e.g. public.item_price")
    return table


QualifiedTable = Annotated[str, AfterValidator(_qualified)]


class Lane(Strict):
    """A priority lane of a PostgreSQL source: a connector of its own (<name>.<lane>) with its own slot and a
    publication whose row filter sends it the rows of the lane (cdc/lanes.py)."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,30}$", description="suffix of the lane's connector, slot and publication"
    )
    where: str | None = Field(
        None,
        description="SQL condition on the POS row, as a publication row filter takes it (the row's columns, "
        "built-in operators and immutable functions); a row goes to the first lane whose condition holds; the "
        "last lane has none and takes every other row",
    )


class PostgresSource(Strict):
    type: Literal["postgres"]
    dsn: str = Field(description="libpq connection string or postgresql:// URL of the POS database")
    tables: list[QualifiedTable] = Field(min_length=1, description="schema-qualified tables to capture")
    slot: str | None = Field(None, description="replication slot; default cdc_<name>")
    publication: str | None = Field(None, description="publication; default cdc_<name>")
    snapshot: Literal["initial", "never"] = "initial"
    status_interval_s: float = Field(10.0, gt=0, description="standby status update interval")
    heartbeat_interval_s: float = Field(
        10.0, ge=0, description="while idle, emit a WAL message this often so the slot advances (0: off)"
    )
    heartbeat_query: str | None = Field(
        None,
        description="statement run as the heartbeat instead of pg_logical_emit_message, e.g. an UPDATE of "
        "a heartbeat table that is in the publication",
    )
    stream_in_progress: bool = Field(
        False,
        description="have PostgreSQL (14+) stream a large transaction while it runs (pgoutput protocol 2), so "
        "that its commit does not hold back the transactions after it; on for lanes",
    )
    row_filter: str | None = Field(
        None,
        description="capture only the POS rows for which this SQL condition holds (the publication's row "
        "filter, PostgreSQL 15+; the tables need REPLICA IDENTITY FULL); set for each lane from `lanes`",
    )
    lanes: list[Lane] = Field(
        default_factory=list,
        description="priority lanes: each a connector of its own, run side by side by `cdc run`, so a bulk "
        "reprice never delays a promotion; every row is in exactly one lane (see Lane)",
    )

    @model_validator(mode="after")
    def _lanes_cover_every_row_once(self) -> PostgresSource:
        if not self.lanes:
            return self
        names = [lane.name for lane in self.lanes]
        if len(self.lanes) < 2:
            raise ValueError("lanes: give two or more (the last, without `where`, takes every other row)")
        if len(set(names)) != len(names):
            raise ValueError(f"lanes: names must differ: {', '.join(names)}")
        if self.lanes[-1].where is not None or any(lane.where is None for lane in self.lanes[:-1]):
            raise ValueError(
                "lanes: every lane but the last needs `where`, and the last has none: a row goes to the first "
                "lane whose condition holds, the last takes the rest, so each row is in exactly one lane"
            )
        if self.row_filter is not None:
            raise ValueError("give row_filter or lanes, not both (each lane's filter is made from `where`)")
        return self


class HistoryConfig(Strict):
    """Price history: every applied change's old and new values, its source transaction (txid, commit LSN),
    commit time, who changed it and how it came (`stream`, `snapshot`, `schedule`, `approve:<who>#<entry>`,
    `pick_fallback`: a pick's fallback row taking over from the designated store's deleted one), in the
    bookkeeping table cdc_price_history of the sink database, written in the same transaction as the change.
    A change that leaves the recorded columns as they were is not recorded; a rejected quarantine entry is
    (op `x`, via `reject:<who>#<entry>`, new_value the refused values). `history: true` takes the
    defaults."""

    fields: list[str] | None = Field(
        None,
        min_length=1,
        description="storefront columns whose old and new values are recorded, e.g. [price]; "
        "default: every column the change writes except the key",
    )
    changed_by: str | None = Field(
        None,
        description="the POS column naming who made the change, e.g. updated_by; read from the source row "
        "before any transform, so a later drop does not hide it",
    )


def _history(v: Any) -> Any:
    if v is True:
        return {}
    if v is False:
        return None
    return v


class SqlSink(Strict):
    type: Literal["sql"]
    url: str = Field(description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db")
    table: str = Field(description="storefront table (schema.table or table)")
    key: list[str] = Field(min_length=1, description="columns that identify a row in the storefront table")
    delete: Literal["hard", "soft"] = "hard"
    soft_delete_column: str = Field("deleted_at", description="set to the delete time when delete: soft")
    truncate: Literal["delete", "ignore"] = Field("delete", description="what a source TRUNCATE does")
    create_table: bool = Field(False, description="create a missing target table from the events (demos)")
    batch_size: int = Field(20000, ge=1, description="changes written per sink round trip")
    batch_max_ms: int = Field(200, ge=1, description="longest a change waits for its batch to fill")
    min_commit_interval_ms: int = Field(
        5,
        ge=0,
        le=1000,
        description="under load, the shortest time from one commit's start to the next: every commit costs "
        "pos-cdc and the storefront CPU (a single sale's about 0.25 ms of pos-cdc's), so a change waits up to "
        "this much longer and each commit takes what arrived meanwhile; 0: the next commit starts as soon as "
        "the one before it ended",
    )
    history: Annotated[HistoryConfig | None, BeforeValidator(_history)] = Field(
        None, description="record price history (see HistoryConfig); true for the defaults"
    )
    position_group: str | None = Field(
        None,
        pattern=NAME_RE,
        description="connectors that write the same storefront rows from one POS (priority lanes) name one "
        "group: each key's POS position is then shared and claimed row by row, so the newest POS change wins "
        "whichever lane brings it (default: the connector's own positions)",
    )
    bookkeeping_schema: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$",
        description="PostgreSQL storefront: the schema of pos-cdc's bookkeeping tables (cdc_offsets, ...), "
        "e.g. one `cdc setup-sink` made for them; default: the first schema of the search path, as the target's",
    )

    @field_validator("bookkeeping_schema")
    @classmethod
    def _schema_needs_postgres(cls, schema: str | None, info: ValidationInfo) -> str | None:
        if schema and not str(info.data.get("url", "postgresql")).startswith(("postgresql", "postgres:")):
            raise ValueError(
                "only a PostgreSQL storefront has schemas; on MariaDB and SQLite the bookkeeping tables live "
                "in the storefront database (leave bookkeeping_schema out)"
            )
        return schema


SourceConfig = Annotated[PostgresSource | KafkaSource, Field(discriminator="type")]
SinkConfig = Annotated[SqlSink | KafkaSink, Field(discriminator="type")]


class MetricsConfig(Strict):
    port: int | None = Field(None, ge=0, le=65535)
    host: str = "127.0.0.1"


def _zone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name, e.g. Asia/Shanghai or UTC)") from None
    return name


class ReconcileConfig(Strict):
    """The daily full comparison of POS and storefront (`cdc reconcile`), run by `cdc run` beside the stream."""

    at: str = Field(
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$", description="time of day, HH:MM"
    )
    timezone: Annotated[str, AfterValidator(_zone)] = Field("UTC", description="IANA time zone of `at`")
    repair: bool = Field(False, description="fix the drift found (as `cdc reconcile --repair`)")


class ConnectorConfig(Strict):
    name: str = Field(pattern=NAME_RE, description="unique; metrics label and key of stored offsets")
    source: SourceConfig
    transforms: list[StageConfig] = Field(default_factory=list)
    sink: SinkConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    reconcile: ReconcileConfig | None = Field(
        None, description="run the full comparison every day at a time (see ReconcileConfig)"
    )
    path: str = Field("", exclude=True, description="file the config was read from (set by the loader)")

    @property
    def slot(self) -> str:
        return self.source.slot or f"cdc_{_ident(self.name)}"

    @property
    def publication(self) -> str:
        return self.source.publication or f"cdc_{_ident(self.name)}"


def transport_problems(cfg: ConnectorConfig) -> list[tuple[tuple, str]]:
    """Stages that need what one side of a Kafka hop does not have: the storefront (a guard comparing with
    it, scheduled prices) is only where the SQL sink is; the POS (a pick's fallback store) only where the
    PostgreSQL source is."""
    out = []
    for i, t in enumerate(cfg.transforms):
        if cfg.sink.type == "kafka":
            if t.type == "guard" and t.max_change_pct is not None:
                out.append(
                    (
                        ("transforms", i, "max_change_pct"),
                        "compares with the storefront's price, which a connector with a Kafka sink does not "
                        "have: put this guard in the connector that reads the topics and writes the storefront",
                    )
                )
            if t.type == "schedule":
                out.append(
                    (
                        ("transforms", i, "type"),
                        "scheduled prices are kept and applied by the storefront's sink: put the schedule stage "
                        "in the connector that reads the topics and writes the storefront",
                    )
                )
        if (
            cfg.source.type == "kafka"
            and t.type == "guard"
            and t.who is not None
            and t.who.lookup is not None
        ):
            out.append(
                (
                    ("transforms", i, "who", "lookup"),
                    "reads the roles from the POS database, which a connector reading Kafka does not reach: "
                    "give them in who.roles, or put the guard in the connector that reads the POS",
                )
            )
        if cfg.source.type == "kafka" and t.type == "pick" and t.fallback_store is not None:
            out.append(
                (
                    ("transforms", i, "fallback_store"),
                    "the fallback store is read from the POS database, which a connector reading Kafka does not "
                    "reach: put the pick in the connector that reads the POS",
                )
            )
    return out


# --- loading --------------------------------------------------------------------------------------------


class _Unset(str):
    """What an unset ${VAR} leaves: its own problem is reported, the model's complaints about it are not."""


def _to_data(node: yaml.Node, lines: dict[tuple, int], path: tuple, problems: list, fname: str) -> Any:
    """A composed YAML node -> plain data, recording the line of every path and interpolating ${VAR}."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out = {}
        for k, v in node.value:
            key = yaml.safe_load(yaml.serialize(k)) if not isinstance(k, yaml.ScalarNode) else k.value
            out[key] = _to_data(v, lines, path + (key,), problems, fname)
            lines[path + (key,)] = k.start_mark.line + 1  # a field's problems point at its key
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_data(v, lines, path + (i,), problems, fname) for i, v in enumerate(node.value)]
    text = node.value
    if "${" in text:
        field = ".".join(str(p) for p in path) or "(root)"
        before = len(problems)
        text = expand(text, f"{fname}:{lines[path]}: {field}", Path(fname).parent, problems)
        if len(problems) > before:
            return _Unset(text)
    # a plain scalar gets its implicit type (int, bool, null...) from its final text; quoted ones stay str,
    # and so does one holding a file's secret (a password of digits is still a password)
    plain = node.style is None and "${file:" not in node.value
    tag = _LOADER.resolve(yaml.ScalarNode, text, (True, False)) if plain else node.tag
    return _LOADER.construct_object(yaml.ScalarNode(tag, text), deep=True)


_LOADER = yaml.SafeLoader("")


def _locate(data: Any, loc: tuple, lines: dict[tuple, int]) -> tuple[str, int]:
    """Follow a pydantic error location through the data (skipping union tags) -> (field path, line)."""
    path: tuple = ()
    node = data
    shown: list[str] = []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node, path = node[part], path + (part,)
            shown.append(str(part))
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node, path = node[part], path + (part,)
            if path == ("transforms", part):  # a stage by the name the logs and metrics give it: guard#2
                kind = node.get("type") if isinstance(node, dict) else None
                shown[-1] += f"[{kind if isinstance(kind, str) else ''}#{part + 1}]"
            else:
                shown.append(str(part))
        elif isinstance(node, dict) and isinstance(part, str) and part == node.get("type"):
            continue  # discriminated-union tag
        else:
            shown.append(str(part))
            node = None
    return ".".join(shown) or "(root)", lines.get(path, 1)


def yaml_problem(e: yaml.YAMLError, text: str) -> tuple[int, str]:
    """(line, message) of a YAML syntax error, on the line where the mistake is: PyYAML reports where it
    noticed, which is often the line after (an unclosed quote or brace, a key without its ':')."""
    problem = getattr(e, "problem", None) or str(e)
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    line = mark.line + 1 if mark else 1
    what = getattr(e, "context", None) or ""
    if context is not None and what.startswith(("while scanning a quoted", "while parsing a flow")):
        return context.line + 1, f"{what[len('while ') :]} that starts here: {problem}"
    if problem.startswith("mapping values are not allowed") and line > 1:
        earlier = [n for n in range(line - 1, 0, -1) if text.splitlines()[n - 1].strip()]
        if earlier and ":" not in text.splitlines()[earlier[0] - 1]:
            return earlier[0], "a key without its ':' (the next line's ':' is where YAML noticed)"
    return line, problem


def load_config(file: str | os.PathLike) -> ConnectorConfig:
    fname = str(file)
    try:
        text = Path(file).read_text()
    except OSError as e:
        raise ConfigError([f"{fname}:1: (file): cannot read: {e.strerror}"]) from None
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as e:
        line, message = yaml_problem(e, text)
        raise ConfigError([f"{fname}:{line}: (yaml): {message}"]) from None
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ConfigError([f"{fname}:1: (root): expected a mapping with name, source, sink"])
    lines: dict[tuple, int] = {}
    problems: list[str] = []
    data = _to_data(root, lines, (), problems, fname)  # unset ${VAR}s are problems; the rest is still checked
    try:
        cfg = ConnectorConfig.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            if isinstance(err.get("input"), _Unset):
                continue
            field, line = _locate(data, err["loc"], lines)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see the connector reference)"
            elif err["type"] == "union_tag_invalid":
                msg = f"unknown type {err['input'].get('type')!r}; expected one of {err['ctx']['expected_tags']}"
            elif err["type"] == "union_tag_not_found":
                msg = "missing `type`"
            problems.append(f"{fname}:{line}: {field}: {msg}")
    else:  # checks across stages (each stage's own config is valid)
        for i, key, msg in pick_fallback_problems(cfg.transforms):
            field, line = _locate(data, ("transforms", i, key), lines)
            problems.append(f"{fname}:{line}: {field}: {msg}")
        for loc, msg in transport_problems(cfg):
            field, line = _locate(data, loc, lines)
            problems.append(f"{fname}:{line}: {field}: {msg}")
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: int(p[len(fname) + 1 :].split(":", 1)[0])))
    remember_secrets_of(cfg)
    cfg.path = fname
    return cfg
