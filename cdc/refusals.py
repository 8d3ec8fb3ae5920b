"""A database that refuses pos-cdc's connection — a wrong password, a certificate its CA did not sign, no
pg_hba.conf entry — will refuse it again: such errors are terminal, each with what to fix, rather than retried
for `--retry-for` seconds like a server that is away (cdc/sources/pg_stream.py, cdc/sinks/sql/storefront.py)."""

from __future__ import annotations

# (text in the driver's message, what to fix)
REFUSALS = (
    (
        "password authentication failed",
        "the user name or password is wrong: check the DSN or URL (its ${VAR} or ${file:...}); after a "
        "rotation, the new password",
    ),
    (
        "access denied for user",
        "the user name or password is wrong: check the URL (its ${VAR} or ${file:...})",
    ),
    (
        "certificate verify failed",
        "the server's certificate is not signed by a CA pos-cdc trusts: sslrootcert (ssl_ca for MariaDB) "
        "must name the PEM file of the CA that signed it",
    ),
    (
        "does not match host name",
        "the server's certificate is not for the host name pos-cdc connects to: connect by a name or address "
        "the certificate lists",
    ),
    (
        "root certificate file",
        "sslrootcert names a file pos-cdc cannot read: give the CA's PEM file",
    ),
    (
        "no pg_hba.conf entry",
        "the server's pg_hba.conf has no line that lets this user in from here this way (a `hostssl` "
        "line needs sslmode=require or verify-full; a replication connection needs a `replication` line): "
        "ask the DBA, see SECURITY.md",
    ),
)


def refusal_hint(message: str) -> str | None:
    """What to fix, when `message` says the server refused the connection for good; None otherwise."""
    low = message.lower()
    for text, hint in REFUSALS:
        if text in low:
            return hint
    return None
