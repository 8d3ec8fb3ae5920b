"""Transform stages: pure functions of a change event, configured by pydantic models.

    stages = build_stages([{"type": "rename", "fields": {"sku_code": "sku"}},
                           {"type": "money", "field": "price", "divide_by": 100, "scale": 2}])
    ev = apply_stages(stages, ev)          # None: filtered out; HoldError: hold this change

Stage names are "<type>#<1-based position>" ("money#2"); a HoldError raised by a stage carries it as `rule`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, TypeAdapter

from cdc.errors import HoldError, TerminalError, TransientError
from cdc.events import ChangeEvent, jsonable
from cdc.stages.base import Stage, StageConfigBase
from cdc.stages.drop import DropConfig, DropStage
from cdc.stages.filter import FilterConfig, FilterStage
from cdc.stages.guard import GuardConfig, GuardStage, GuardViolation
from cdc.stages.money import MoneyConfig, MoneyStage
from cdc.stages.pick import PickConfig, PickStage
from cdc.stages.rename import RenameConfig, RenameStage
from cdc.stages.route import RouteConfig, RouteRule, RouteStage
from cdc.stages.schedule import ScheduleConfig, ScheduleStage
from cdc.stages.set import SetConfig, SetStage
from cdc.stages.tax import TaxConfig, TaxStage

__all__ = [
    "DropConfig",
    "DropStage",
    "FilterConfig",
    "FilterStage",
    "GuardConfig",
    "GuardStage",
    "GuardViolation",
    "MoneyConfig",
    "MoneyStage",
    "PickConfig",
    "PickStage",
    "RenameConfig",
    "RenameStage",
    "RouteConfig",
    "RouteRule",
    "RouteStage",
    "ScheduleConfig",
    "ScheduleStage",
    "SetConfig",
    "SetStage",
    "Stage",
    "StageConfig",
    "StageConfigBase",
    "TaxConfig",
    "TaxStage",
    "apply_stages",
    "build_stages",
    "snapshot",
    "stage_config_adapter",
]

StageConfig = Annotated[
    RenameConfig
    | FilterConfig
    | MoneyConfig
    | DropConfig
    | SetConfig
    | TaxConfig
    | PickConfig
    | RouteConfig
    | GuardConfig
    | ScheduleConfig,
    Field(discriminator="type"),
]

stage_config_adapter: TypeAdapter[list[StageConfig]] = TypeAdapter(list[StageConfig])


def build_stages(configs: list[StageConfig] | list[dict[str, Any]]) -> list[Stage]:
    """Stages for `configs` (models, or plain dicts that are validated here), named "<type>#<n>", n from 1."""
    models = [c if isinstance(c, StageConfigBase) else None for c in configs]
    if any(m is None for m in models):
        models = stage_config_adapter.validate_python(
            [c.model_dump() if isinstance(c, StageConfigBase) else c for c in configs]
        )
    return [m.build(f"{m.type}#{i}") for i, m in enumerate(models, start=1)]  # type: ignore[union-attr]


def snapshot(ev: ChangeEvent | None) -> dict[str, Any] | None:
    """An envelope-ish, JSON-ready copy of the parts of an event a stage changes (for `cdc explain`)."""
    if ev is None:
        return None
    return {
        "op": ev.op,
        "before": jsonable(ev.before),
        "after": jsonable(ev.after),
        "key_columns": list(ev.key_columns),
    }


def apply_stages(
    stages: list[Stage],
    ev: ChangeEvent,
    trace: list[tuple[str, dict[str, Any] | None]] | None = None,
    dropped: dict[str, int] | None = None,
) -> ChangeEvent | None:
    """Run `ev` through `stages`; None when a stage drops it (counted in `dropped` by stage name, if given).

    A HoldError from a stage propagates as it is, and so do TransientError and TerminalError (from a lookup the
    pipeline injected, e.g. the storefront being away); any other exception from a stage becomes a HoldError
    naming that stage (one bad row must not stop the connector). If `trace` is a list, `(stage.name,
    snapshot)` is appended after each stage that returns (snapshot None when the change was dropped).
    """
    stage: Stage | None = None
    try:
        if trace is None:
            for stage in stages:
                ev = stage(ev)  # type: ignore[assignment]
                if ev is None:
                    if dropped is not None:
                        dropped[stage.name] = dropped.get(stage.name, 0) + 1
                    return None
            return ev
        for stage in stages:
            ev = stage(ev)  # type: ignore[assignment]
            trace.append((stage.name, snapshot(ev)))
            if ev is None:
                if dropped is not None:
                    dropped[stage.name] = dropped.get(stage.name, 0) + 1
                return None
        return ev
    except HoldError as exc:
        if not exc.rule and stage is not None:
            exc.rule = stage.name
        raise
    except (TransientError, TerminalError):
        raise
    except Exception as exc:
        name = stage.name if stage is not None else "?"
        raise HoldError(
            f"stage {name} failed: {type(exc).__name__}: {exc}",
            rule=name,
            details={"error": type(exc).__name__},
        ) from exc
