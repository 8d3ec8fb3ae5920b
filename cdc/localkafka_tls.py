"""The encrypted listeners of a local Kafka broker (cdc/localkafka.py): SSL, and SASL_SSL with SCRAM-SHA-512, on
loopback ports of their own beside the PLAINTEXT listener the broker and its controller use themselves.

The broker's key and certificate are PEM files (Kafka 4 reads PEM keystores: `ssl.keystore.type=PEM`, the key
and its chain in one file), made by cdc/localtls.py; the SCRAM users are written into the cluster's metadata
when the storage is formatted (`kafka-storage format --add-scram`), so they exist before the broker starts.
"""

from __future__ import annotations

from pathlib import Path

from cdc.localpg import free_port
from cdc.localtls import TlsFiles

SCRAM = "SCRAM-SHA-512"


class SecureListeners:
    def __init__(self, base: Path, tls: TlsFiles | None, scram_users: dict[str, str] | None, taken: set[int]):
        if scram_users and tls is None:
            raise ValueError("scram_users need tls: the SASL listener is SASL_SSL")
        self.base, self.tls, self.users = base, tls, dict(scram_users or {})
        self.ssl_port = self.sasl_port = None
        if tls is not None:
            self.ssl_port = _another_port(taken)
            if self.users:
                self.sasl_port = _another_port(taken | {self.ssl_port})

    def listeners(self) -> list[str]:
        out = []
        if self.ssl_port:
            out.append(f"SSL://127.0.0.1:{self.ssl_port}")
        if self.sasl_port:
            out.append(f"SASL_SSL://127.0.0.1:{self.sasl_port}")
        return out

    def properties(self) -> dict[str, str]:
        if self.tls is None:
            return {}
        keystore = self.base / "broker-keystore.pem"
        keystore.write_text(self.tls.key.read_text() + self.tls.cert.read_text())
        keystore.chmod(0o600)
        props = {
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "ssl.client.auth": "none",
        }
        if self.sasl_port:
            props.update(
                {
                    "sasl.enabled.mechanisms": SCRAM,
                    f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config": (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    ),
                }
            )
        return props

    def format_args(self) -> list[str]:
        """`kafka-storage format` arguments that create the SCRAM users."""
        args = []
        for name, password in self.users.items():
            args += ["--add-scram", f"{SCRAM}=[name={name},password={password}]"]
        return args


def _another_port(taken: set[int]) -> int:
    port = free_port()
    while port in taken:
        port = free_port()
    return port
