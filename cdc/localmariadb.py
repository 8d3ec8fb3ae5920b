"""A throwaway local MariaDB server (Debian's mariadb-server binaries) in a temp dir on a free loopback port.

Used by the test suite and the MariaDB benchmark. Grant tables are skipped: it is a private, loopback-only
server that lives as long as the tests. `grants=True` keeps them (the least-privilege tests: users and GRANTs
that hold); root then reaches it over TCP as root@127.0.0.1, made at start over the socket.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cdc.errors import TerminalError
from cdc.localpg import _run_as_kwargs, free_port


class LocalMariaDB:
    def __init__(self, base_dir: str | None = None, port: int | None = None, grants: bool = False):
        self.grants = grants
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pos-cdc-mariadb-"))
        self.datadir = self.base / "data"
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self._as = _run_as_kwargs()
        self.mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.install_db = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        if not Path(self.mariadbd).exists():
            raise TerminalError(
                "no MariaDB server found: apt-get install mariadb-server (scripts/setup.sh does)"
            )

    def start(self) -> LocalMariaDB:
        import os

        if self._as:
            os.chown(self.base, self._as["user"], self._as["group"])
        if not self.datadir.exists():
            proc = subprocess.run(
                [
                    self.install_db,
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--skip-test-db",
                    "--auth-root-authentication-method=normal",
                    "--skip-name-resolve",
                ],
                capture_output=True,
                text=True,
                cwd=self.base,
                **self._as,
            )
            if proc.returncode != 0:
                raise TerminalError(
                    f"mariadb-install-db failed: {proc.stderr.strip() or proc.stdout.strip()}"
                )
        self.proc = subprocess.Popen(
            [
                self.mariadbd,
                "--no-defaults",
                f"--datadir={self.datadir}",
                f"--socket={self.base / 'sock'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                *([] if self.grants else ["--skip-grant-tables"]),
                "--skip-name-resolve",
                f"--pid-file={self.base / 'pid'}",
                f"--log-error={self.base / 'error.log'}",
                "--innodb-buffer-pool-size=256M",
                "--innodb-flush-log-at-trx-commit=2",
                "--max-connections=200",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.base,
            **self._as,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.base / "error.log").read_text() if (self.base / "error.log").exists() else ""
                raise TerminalError(f"mariadbd exited: {log.strip().splitlines()[-1:] or '?'}")
            try:
                if self.grants:
                    self._root_over_tcp()
                self.execute("SELECT 1")
                return self
            except Exception:  # noqa: BLE001 - not accepting connections yet
                time.sleep(0.2)
        raise TerminalError("mariadbd did not accept connections within 60 s")

    def _root_over_tcp(self) -> None:
        import pymysql

        conn = pymysql.connect(unix_socket=str(self.base / "sock"), user="root", autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        finally:
            conn.close()

    def connect(self, database: str | None = None):
        import pymysql

        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=database, autocommit=True
        )

    def execute(self, sql: str, database: str | None = None, params=None) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: str) -> str:
        self.execute(f"CREATE DATABASE `{name}`")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalMariaDB:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
