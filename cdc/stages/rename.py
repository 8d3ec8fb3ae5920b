"""`rename`: rename columns in before, after and the key columns."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from cdc.errors import HoldError
from cdc.events import ChangeEvent
from cdc.stages.base import StageConfigBase


class RenameConfig(StageConfigBase):
    """Rename columns in before, after and the key columns."""

    type: Literal["rename"]
    fields: dict[str, str] = Field(
        description="old name -> new name, e.g. {item_code: sku, price_fen: price}"
    )

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("rename needs at least one field, e.g. fields: {old_name: new_name}")
        for old, new in v.items():
            if not old.strip() or not new.strip():
                raise ValueError(f"rename {old!r} -> {new!r}: field names must not be empty")
        targets: dict[str, str] = {}
        for old, new in v.items():
            if new in targets:
                raise ValueError(f"rename maps both {targets[new]!r} and {old!r} to {new!r}")
            targets[new] = old
        return v

    def build(self, name: str) -> RenameStage:
        return RenameStage(self, name)


class RenameStage:
    def __init__(self, config: RenameConfig, name: str):
        self.config = config
        self.name = name
        self._map = dict(config.fields)
        self._keys_cache: dict[tuple[str, ...], tuple[str, ...]] = {}

    def _rename(self, row: dict, which: str, ev: ChangeEvent) -> dict:
        m = self._map
        out = {m.get(k, k): v for k, v in row.items()}
        if len(out) != len(row):
            # two columns landed on one name (e.g. renaming a -> b when the row already has b)
            names = sorted(k for k in row if k not in m and k in m.values())
            raise HoldError(
                f"rename would overwrite column(s) {', '.join(map(repr, names))} in {which} of "
                f"{ev.schema}.{ev.table}",
                rule=self.name,
                details={"columns": names, "fields": m},
            )
        return out

    def __call__(self, ev: ChangeEvent) -> ChangeEvent:
        before, after = ev.before, ev.after
        new_after = None if after is None else self._rename(after, "after", ev)
        if before is not None:
            ev.before = new_after if before is after else self._rename(before, "before", ev)
        ev.after = new_after
        keys = ev.key_columns
        if keys:
            new_keys = self._keys_cache.get(keys)
            if new_keys is None:
                m = self._map
                new_keys = tuple(m.get(k, k) for k in keys)
                if len(self._keys_cache) < 10_000:
                    self._keys_cache[keys] = new_keys
            ev.key_columns = new_keys
        return ev
