"""Error classes. Terminal errors stop the connector with one line that says what to fix; transient ones are
retried with backoff; a HoldError keeps one change out of the storefront (dead letter) while the rest flows."""


class CdcError(Exception):
    """Base class. `str(err)` is the one line a user sees."""


class ConfigError(CdcError):
    """A config problem; `problems` holds `FILE:LINE: field.path: message` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class TerminalError(CdcError):
    """Retrying will not help (a missing table, a lost slot, bad permissions): stop and say what to fix."""


class TransientError(CdcError):
    """A dependency is away (connection refused, walsender terminated): retry with backoff."""


class HoldError(CdcError):
    """This one change cannot go to the storefront as it is; hold it with `reason` and go on with the rest."""

    def __init__(self, reason: str, rule: str = "", details: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.rule = rule
        self.details = details or {}
