"""The Kafka connection's security settings of a connector config (cdc/config_kafka.py): checked together,
and turned into the chosen client's names (kafka-python's, or librdkafka's for confluent-kafka)."""

from __future__ import annotations

from typing import Any

# config field -> (kafka-python's name, librdkafka's name)
NAMES = {
    "security_protocol": ("security_protocol", "security.protocol"),
    "ssl_cafile": ("ssl_cafile", "ssl.ca.location"),
    "ssl_certfile": ("ssl_certfile", "ssl.certificate.location"),
    "ssl_keyfile": ("ssl_keyfile", "ssl.key.location"),
    "sasl_mechanism": ("sasl_mechanism", "sasl.mechanism"),
    "sasl_username": ("sasl_plain_username", "sasl.username"),
    "sasl_password": ("sasl_plain_password", "sasl.password"),
}
# the same settings as `options` may spell them
_ALIASES = {"sasl.mechanisms"}


def _given(cfg) -> dict[str, Any]:
    return {field: getattr(cfg, field) for field in NAMES if getattr(cfg, field) is not None}


def check_security(cfg):
    """The security fields make sense together, and are not given twice (as a field and in `options`)."""
    given = _given(cfg)
    if not given:
        return cfg
    spelled = {name for pair in NAMES.values() for name in pair} | _ALIASES
    twice = sorted(set(cfg.options) & spelled)
    if twice:
        raise ValueError(
            f"options: {', '.join(twice)} is set by pos-cdc from security_protocol, ssl_* and sasl_*: give "
            "each setting once, in those fields"
        )
    protocol = cfg.security_protocol or "PLAINTEXT"
    sasl = [f for f in given if f.startswith("sasl_")]
    if sasl and not protocol.startswith("SASL_"):
        raise ValueError(f"{', '.join(sasl)} need security_protocol: SASL_SSL (or SASL_PLAINTEXT)")
    if protocol.startswith("SASL_"):
        missing = [f for f in ("sasl_mechanism", "sasl_username", "sasl_password") if f not in given]
        if missing:
            raise ValueError(f"security_protocol {protocol} needs {', '.join(missing)}")
    ssl = [f for f in given if f.startswith("ssl_")]
    if ssl and not protocol.endswith("SSL"):
        raise ValueError(f"{', '.join(ssl)} need security_protocol: SSL or SASL_SSL")
    if (cfg.ssl_certfile is None) != (cfg.ssl_keyfile is None):
        raise ValueError("give ssl_certfile and ssl_keyfile together (a client certificate and its key)")
    return cfg


def security_settings(cfg) -> dict[str, Any]:
    """The security fields in the names of the config's client."""
    which = 1 if cfg.client == "confluent-kafka" else 0
    out = {}
    for field, value in _given(cfg).items():
        out[NAMES[field][which]] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return out
