"""Before pos-cdc's Kafka clients connect over TLS or SASL: one connection of its own to a bootstrap broker that
does the TLS handshake and the SASL authentication the clients would do, so that a refusal — a broker
certificate the configured CA did not sign, a wrong user name or password, TLS spoken to a plain listener — is
a TerminalError that says what to fix, at once. The clients themselves report these only as "Unable to
bootstrap" after 30 s (kafka-python) or retry them forever (librdkafka), which pos-cdc would take for a broker
that is away and retry for `--retry-for` seconds.

A broker that does not answer at all is left to the clients (a TransientError, retried). Settings are
kafka-python's names (cdc/kafka_admin.py's admin_options turns librdkafka's into them).
"""

from __future__ import annotations

import socket
import ssl
import struct
from typing import Any

from cdc.errors import TerminalError

SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36
CLIENT_ID = b"pos-cdc-preflight"


def check_access(bootstrap: str, options: dict[str, Any], timeout_s: float = 10.0) -> None:
    protocol = str(options.get("security_protocol") or "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError):
            continue  # away: the next one, or the clients' own retries
        try:
            if protocol.endswith("SSL"):
                sock = _tls(sock, host, server, options)
            if protocol.startswith("SASL_"):
                _sasl(sock, host, server, options)
        except (TimeoutError, ConnectionError):
            continue
        finally:
            sock.close()
        return


def _refused(server: str, what: str, hint: str) -> TerminalError:
    return TerminalError(f"Kafka at {server} refused pos-cdc: {what} ({hint})")


def _tls(sock: socket.socket, host: str, server: str, options: dict) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=options.get("ssl_cafile"))
    if options.get("ssl_check_hostname") is False:
        ctx.check_hostname = False
    if options.get("ssl_certfile"):
        ctx.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"), options.get("ssl_password"))
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as e:
        hint = (
            "the broker's certificate is not for this host name: connect by a name or address it lists"
            if "mismatch" in (e.verify_message or "")
            else "ssl_cafile must name the PEM file of the CA that signed the brokers' certificates"
        )
        raise _refused(server, f"TLS certificate verify failed: {e.verify_message}", hint) from None
    except ssl.SSLError as e:
        raise _refused(
            server,
            f"TLS handshake failed: {e.reason or e}",
            "is this the broker's SSL or SASL_SSL listener? security_protocol must match the listener's",
        ) from None


def _sasl(sock: socket.socket, host: str, server: str, options: dict) -> None:
    from kafka.net.sasl import get_sasl_mechanism

    mechanism_name = options.get("sasl_mechanism") or "PLAIN"
    error, mechanisms = _handshake(sock, mechanism_name)
    if error and not mechanisms:
        raise _refused(
            server,
            "this listener takes no SASL",
            "security_protocol must match the listener's: SSL (or PLAINTEXT) here, or connect to the SASL listener",
        )
    if error:
        raise _refused(
            server,
            f"SASL mechanism {mechanism_name} is not enabled (the broker offers {', '.join(mechanisms)})",
            "set sasl_mechanism to one the listener enables",
        )
    mechanism = get_sasl_mechanism(mechanism_name)(host=host, **{"sasl_mechanism": mechanism_name, **options})
    while not mechanism.is_done():
        error, message, reply = _authenticate(sock, mechanism.auth_bytes())
        if error:
            raise _refused(
                server,
                f"SASL {mechanism_name} authentication of user {options.get('sasl_plain_username')!r} "
                f"failed: {message}",
                "the user name or password is wrong, or the user has no SCRAM credential on the brokers: check "
                "sasl_username and sasl_password (its ${VAR} or ${file:...}); after a rotation, the new password",
            )
        if mechanism_name == "PLAIN":
            return
        try:
            mechanism.receive(reply)
        except Exception as e:  # noqa: BLE001 - the SCRAM client refuses the broker's proof
            raise _refused(server, f"SASL {mechanism_name}: {e}", "is this the broker you meant?") from None


# --- the two Kafka requests, by hand: request header v1, non-flexible versions -----------------------------


def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, version, 1, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _read(sock, 4))[0]
    return _read(sock, size)[4:]  # without the correlation id


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        out += chunk
    return out


def _handshake(sock: socket.socket, mechanism: str) -> tuple[int, list[str]]:
    name = mechanism.encode()
    data = _request(sock, SASL_HANDSHAKE, 1, struct.pack(">h", len(name)) + name)
    error, count = struct.unpack(">hi", data[:6])
    pos, offered = 6, []
    for _ in range(max(count, 0)):
        (length,) = struct.unpack(">h", data[pos : pos + 2])
        offered.append(data[pos + 2 : pos + 2 + length].decode())
        pos += 2 + length
    return error, offered


def _authenticate(sock: socket.socket, token: bytes) -> tuple[int, str, bytes]:
    data = _request(sock, SASL_AUTHENTICATE, 0, struct.pack(">i", len(token)) + token)
    error, length = struct.unpack(">hh", data[:4])
    pos = 4
    message = ""
    if length >= 0:
        message, pos = data[pos : pos + length].decode(errors="replace"), pos + length
    (size,) = struct.unpack(">i", data[pos : pos + 4])
    return error, message, data[pos + 4 : pos + 4 + max(size, 0)]
