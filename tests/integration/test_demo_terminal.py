"""`cdc demo` on a real terminal (a tmux pane): the live table stays one table while log lines cut in, a
quarantined SKU's row is marked, and Ctrl-C leaves the final table printed once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

TITLE = "pos-cdc demo: POS (fen) -> storefront (yuan)"


class Pane:
    def __init__(self, command: str):
        self.sock = f"pos-cdc-test-{os.getpid()}"
        self.tmux("new-session", "-d", "-s", "demo", "-x", "140", "-y", "45", "-c", os.getcwd(), command)
        self.tmux("set-option", "-t", "demo", "history-limit", "20000")

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def text(self) -> str:
        """Everything the pane showed, scrollback included, lines joined as typed."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-E", "-", "-t", "demo")

    def wait_for(self, words: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if words in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{words!r} never showed in the pane:\n{self.text()}")

    def close(self) -> None:
        """Stops the demo as a user would (Ctrl-C: it removes its databases), then the pane."""
        if "DEMO-EXIT" not in self.text():
            self.tmux("send-keys", "-t", "demo", "C-c")
            deadline = time.monotonic() + 60
            while "DEMO-EXIT" not in self.text() and time.monotonic() < deadline:
                time.sleep(0.5)
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux missing: ./scripts/setup.sh --with-test-tools")
def test_the_live_table_stays_one_table_and_ctrl_c_prints_it_once():
    pane = Pane(f"{sys.executable} -m cdc.cli demo --rate 30; echo DEMO-EXIT $?; sleep 600")
    try:
        live = pane.wait_for("QUARANTINED (entry", timeout=120)
        # log lines (the guard's quarantine warning) printed above the table, never through it
        assert live.count(TITLE) == 1, live
        assert "dead-lettered" not in live and "quarantined SKU-00002" in live, live
        marked = [line for line in live.splitlines() if "QUARANTINED (entry" in line]
        assert len(marked) == 1 and "SKU-00002" in marked[0], live
        time.sleep(3)  # a few more refreshes with changes flowing
        pane.tmux("send-keys", "-t", "demo", "C-c")
        final = pane.wait_for("DEMO-EXIT", timeout=90)
        assert "DEMO-EXIT 0" in final, final
        assert final.count(TITLE) == 1, final  # the live view went away; the final table is printed once
        assert final.index(TITLE) < final.index("demo finished"), final
        assert "Traceback" not in final, final
    finally:
        pane.close()
