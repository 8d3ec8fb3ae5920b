"""Where a column seen by a stage comes from in the source row (pure; from the stage configs alone).

    source_column(configs_before, "sku")     # -> "item_code" after {type: rename, fields: {item_code: sku}}

A stage that reads the source again by what it sees (the `pick` fallback's lookups, cdc/fallback.py) needs the
source column's name, and the value it sees must be the source's own. Walking the stages before it backwards:
a `rename` is undone; `filter`, `route`, `guard` and `pick` change no column; a column that `set` computes,
that `money`, `tax` (its `into`, else its `field`) or `schedule` (its `field`) changes, or that `drop` removes
has no source column to look up, and `Untraceable` says which stage to move or what to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.stages.base import StageConfigBase

# stages that never change a column's name or value
_PASS_THROUGH = ("filter", "route", "guard", "pick")


class Untraceable(ValueError):
    """The column has no source column of the same value; the message says what to change."""


def source_column(
    configs: Sequence[StageConfigBase], name: str, what: str = "column", user: str = "this stage"
) -> str:
    """The source column that `name` (a column as the stage after `configs` sees it) comes from, unchanged.
    `what` names the column's role and `user` the stage that asks, in the message. Raises Untraceable."""
    col = name
    for i in range(len(configs) - 1, -1, -1):
        cfg = configs[i]
        kind = getattr(cfg, "type", type(cfg).__name__)
        stage = f"{kind}#{i + 1}"
        if kind == "rename":
            back = {new: old for old, new in cfg.fields.items()}  # type: ignore[attr-defined]
            if col in back:
                col = back[col]
            elif col in cfg.fields:  # type: ignore[attr-defined]
                new = cfg.fields[col]  # type: ignore[attr-defined]
                raise Untraceable(
                    f"{what} {name!r}: there is no column {col!r} after {stage}, which renames it to {new!r}"
                )
            continue
        if kind in _PASS_THROUGH:
            continue
        changes = _changed_by(cfg)
        if changes is None:
            raise Untraceable(f"{what} {name!r}: cannot tell what {stage} does to the columns")
        if col in changes:
            past = {"set": "computed", "drop": "dropped"}.get(kind, "changed")
            renamed = f" (named {col!r} there)" if col != name else ""
            raise Untraceable(
                f"{what} {name!r}{renamed} is {past} by {stage}, so no source column holds its value: "
                f"move {user} before {stage}, or use a column the source table has (renamed at most)"
            )
    return col


def _changed_by(cfg: StageConfigBase) -> set[str] | None:
    kind = getattr(cfg, "type", None)
    if kind == "set":
        return set(cfg.fields)  # type: ignore[attr-defined]
    if kind == "drop":
        return set(cfg.fields)  # type: ignore[attr-defined]
    if kind in ("money", "schedule"):
        return {cfg.field}  # type: ignore[attr-defined]
    if kind == "tax":
        return {cfg.into or cfg.field}  # type: ignore[attr-defined]
    return None


def pick_fallback_problems(configs: Sequence[StageConfigBase]) -> list[tuple[int, str, str]]:
    """(index of the pick, its field, message) for each `pick` with a fallback_store whose lookups cannot
    find their columns in the source, and for every such pick after the first (one per connector)."""
    out: list[tuple[int, str, str]] = []
    seen = False
    for i, cfg in enumerate(configs):
        if getattr(cfg, "type", None) != "pick" or getattr(cfg, "fallback_store", None) is None:
            continue
        if seen:
            out.append((i, "fallback_store", "only one pick per connector may have a fallback_store"))
            continue
        seen = True
        before = configs[:i]
        for field, names, what in (
            ("key", cfg.key, "key column"),  # type: ignore[attr-defined]
            ("store_field", [cfg.store_field], "store_field"),  # type: ignore[attr-defined]
        ):
            for n in names:
                try:
                    source_column(before, n, what, "the pick")
                except Untraceable as e:
                    out.append((i, field, f"fallback_store looks rows up in the source by it, but {e}"))
    return out
