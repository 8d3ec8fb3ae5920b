"""The CLI's help as a new user reads it."""

from __future__ import annotations

from typer.testing import CliRunner

from cdc.cli import app


def test_help_shows_flags_without_a_value():
    """`cdc CMD --help` lists a flag (--json, --resnapshot, --help) as a flag, never as taking a <bool>."""
    runner = CliRunner()
    for cmd in (
        "run",
        "status",
        "explain",
        "reconcile",
        "validate",
        "setup-source",
        "setup-sink",
        "drop",
        "replay",
        "demo",
    ):
        out = runner.invoke(app, [cmd, "--help"], terminal_width=120)
        assert out.exit_code == 0, out.output
        assert "<bool>" not in out.output and "--help" in out.output, out.output
    assert "--resnapshot " in runner.invoke(app, ["run", "--help"]).output
