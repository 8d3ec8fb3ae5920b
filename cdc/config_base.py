"""What every part of the connector config shares: models refuse unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def comma_list(v: Any) -> Any:
    """A list of host:port (or any list) -> the comma-separated text a Kafka client takes."""
    return ",".join(str(x) for x in v) if isinstance(v, list) else v
