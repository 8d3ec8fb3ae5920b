"""Secrets in connector configs: `${file:/run/secrets/x}` beside `${VAR}`, and keeping what is secret out of
everything pos-cdc shows (logs, errors, `cdc status`, reprs).

- `read_secret_file` reads one secret (a Docker/Kubernetes/systemd-credentials file): its trailing newline is
  not part of it.
- `hide_password` masks the password of a libpq DSN (`password=...`), a libpq URL or an SQLAlchemy URL
  (`scheme://user:PASSWORD@host/...`) for display.
- `remember` keeps every secret the loaded configs hold (file secrets, DSN and URL passwords, Kafka
  passwords); `redact` replaces any of them in a text with `***`, and `RedactingFilter` does it to every log
  record: a library that prints a connection string in an error cannot leak it past pos-cdc's output.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from urllib.parse import quote, unquote

MASK = "***"
MIN_SECRET_LEN = (
    3  # shorter values would mask innocent text everywhere (a password that short is refused anyway)
)

_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s]*)(@)")

_known: set[str] = set()
_lock = threading.Lock()


def read_secret_file(path: Path) -> str:
    """The secret in `path`, without its trailing newline (`echo pw > file` writes one). Raises OSError,
    ValueError for an empty file."""
    text = path.read_text(encoding="utf-8")
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ValueError("is empty")
    return text


def hide_password(text: str) -> str:
    """A DSN or URL with its password shown as ***."""
    text = _KV_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + MASK + m.group(3), text)


def dsn_passwords(text: str) -> set[str]:
    """The password of a DSN or URL, as written and as it is once percent-decoded (or unquoted)."""
    out = set()
    for m in _KV_PASSWORD.finditer(text):
        raw = m.group(2)
        out.add(raw)
        if raw.startswith("'"):
            out.add(re.sub(r"\\(.)", r"\1", raw[1:-1]))
    for m in _URL_PASSWORD.finditer(text):
        raw = m.group(2)
        out |= {raw, unquote(raw), quote(unquote(raw), safe="")}
    return {p for p in out if p and p != MASK}


def remember(*secrets: str | None) -> None:
    """Adds secrets that `redact` masks from now on (in this process)."""
    with _lock:
        _known.update(s for s in secrets if s and len(s) >= MIN_SECRET_LEN)


def remember_secrets_of(model) -> None:
    """Remembers every secret a loaded config (a pydantic model, nested) holds: SecretStr values, DSN and URL
    passwords, client options named like a password."""
    from pydantic import BaseModel, SecretStr

    def walk(value, name: str = "") -> None:
        if isinstance(value, SecretStr):
            remember(value.get_secret_value())
        elif isinstance(value, str):
            remember(*(dsn_passwords(value) | ({value} if secret_option(name) else set())))
        elif isinstance(value, BaseModel):
            for field in type(value).model_fields:
                walk(getattr(value, field), field)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, str(k))
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v, name)

    walk(model)


def redact(text: str) -> str:
    """`text` with every remembered secret, and any DSN or URL password, replaced by ***."""
    if not isinstance(text, str):
        text = str(text)
    for secret in sorted(_known, key=len, reverse=True):  # longest first: one secret may contain another
        if secret in text:
            text = text.replace(secret, MASK)
    return hide_password(text)


def secret_option(name: str) -> bool:
    """Whether a Kafka client option (either client's spelling) holds a secret."""
    return any(w in name.lower() for w in ("password", "secret", "jaas", "token"))


def redact_options(options: dict) -> dict:
    """Client options with the secret ones' values as ***, and secrets masked in the others."""
    return {
        k: MASK if secret_option(str(k)) else redact(v) if isinstance(v, str) else v
        for k, v in options.items()
    }


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message, its arguments and its exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            import traceback

            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text = redact(text.rstrip("\n"))
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Adds RedactingFilter to every handler of the root logger (call after logging is configured)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
