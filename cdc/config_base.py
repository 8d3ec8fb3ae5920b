"""What every part of the connector config shares: models refuse unknown fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __repr_args__(self):
        """repr() and str() never show a secret: a DSN's or URL's password, a file's secret, a client option
        named like a password are ***."""
        from cdc.secrets import redact, redact_options

        for name, value in super().__repr_args__():
            if isinstance(value, str):
                value = redact(value)
            elif isinstance(value, dict):
                value = redact_options(value)
            yield name, value


def comma_list(v: Any) -> Any:
    """A list of host:port (or any list) -> the comma-separated text a Kafka client takes."""
    return ",".join(str(x) for x in v) if isinstance(v, list) else v
