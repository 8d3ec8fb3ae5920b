"""What every stage shares: the Stage protocol and the base of the config models."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from cdc.events import UNCHANGED_TOAST, ChangeEvent


@runtime_checkable
class Stage(Protocol):
    """A transform: a pure function of one change event.

    Returns the (possibly modified, possibly new) event, or None when the change is dropped (filtered out).
    A stage may mutate the event and its `before`/`after` dicts, which the event owns; it raises
    `cdc.errors.HoldError(reason, rule=self.name)` for a row it cannot handle, and never drops data silently.
    """

    name: str  # "<type>#<1-based index>", e.g. "rename#1"

    def __call__(self, ev: ChangeEvent) -> ChangeEvent | None: ...


class StageConfigBase(BaseModel):
    """Base of the stage config models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def build(self, name: str) -> Stage:  # pragma: no cover - every concrete config overrides it
        raise NotImplementedError


def short(value: object, limit: int = 80) -> str:
    """repr() cut to `limit` characters, for hold reasons and details."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def judgeable_after(ev: ChangeEvent, after: dict, fields, hold) -> dict:
    """`after` with the unchanged TOASTed values among `fields` taken from the old image (REPLICA IDENTITY
    FULL sends them there); raises `hold(ev, reason, field=...)` when the old image lacks one too, as the row
    cannot be judged. Returns `after` itself when nothing needed filling."""
    row = after
    for f in fields:
        if after.get(f) is UNCHANGED_TOAST:
            before = ev.before
            old = before.get(f, UNCHANGED_TOAST) if before else UNCHANGED_TOAST
            if old is UNCHANGED_TOAST:
                raise hold(
                    ev,
                    f"field {f!r} is an unchanged TOASTed value the source did not send, so the row cannot be judged",
                    field=f,
                )
            if row is after:
                row = dict(after)
            row[f] = old
    return row
