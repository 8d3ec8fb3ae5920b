"""`drop`: remove columns from before and after.

Key columns are left in `key_columns` (a stage cannot know the table's key at config time); dropping a key
column from the rows therefore leaves the sink without that key value, so don't.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cdc.events import ChangeEvent
from cdc.stages.base import StageConfigBase


class DropConfig(StageConfigBase):
    """Remove columns from before and after (never drop a key column the sink needs)."""

    type: Literal["drop"]
    fields: list[str] = Field(description="columns to remove, e.g. [channel, internal_note]")

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("drop needs at least one field, e.g. fields: [internal_note]")
        seen: set[str] = set()
        for f in v:
            if not f.strip():
                raise ValueError("field names must not be empty")
            if f in seen:
                raise ValueError(f"field {f!r} is listed twice")
            seen.add(f)
        return v

    def build(self, name: str) -> DropStage:
        return DropStage(self, name)


class DropStage:
    def __init__(self, config: DropConfig, name: str):
        self.config = config
        self.name = name
        self._fields = tuple(config.fields)

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        for row in (ev.before, ev.after):
            if row:
                for f in self._fields:
                    row.pop(f, None)
        return ev
