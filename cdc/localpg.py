"""A throwaway local PostgreSQL cluster (initdb + pg_ctl in a temp dir, loopback, free port, wal_level=logical).

Used by `cdc demo`, the test suite and the benchmarks. PostgreSQL refuses to run as root, so when we are root
the cluster runs as an unprivileged system user (created on first use).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from cdc.errors import TerminalError

RUN_AS = "cdcpg"

LOGICAL_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "fsync": "off",  # throwaway clusters: durability of the test machine is not the point
    "full_page_writes": "off",
    "synchronous_commit": "on",
    "log_min_messages": "warning",
    "logging_collector": "off",
    "max_wal_size": "4GB",
}


def find_bin_dir() -> Path:
    """Directory holding initdb/pg_ctl: $PG_BIN, then PATH, then Debian's /usr/lib/postgresql/*/bin, then
    the `pgserver` wheel if installed."""
    env = os.environ.get("PG_BIN")
    if env and (Path(env) / "pg_ctl").exists():
        return Path(env)
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    try:
        import pgserver  # type: ignore[import-not-found]

        return Path(pgserver.__file__).parent / "pginstall" / "bin"
    except ImportError:
        pass
    raise TerminalError(
        "no PostgreSQL server binaries found: install Debian's `postgresql` package "
        "(apt-get install postgresql) or `pip install pgserver`, or set PG_BIN"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(RUN_AS)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", RUN_AS],
            check=True,
            capture_output=True,
        )
        pw = pwd.getpwnam(RUN_AS)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


class LocalPostgres:
    def __init__(self, base_dir: str | None = None, port: int | None = None, settings: dict | None = None):
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pos-cdc-pg-"))
        self.datadir = self.base / "data"
        self.port = port or free_port()
        self.settings = {**LOGICAL_SETTINGS, **(settings or {})}
        self.bin = find_bin_dir()
        self._as = _run_as_kwargs()
        self.started = False

    def _cmd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, capture_output=True, text=True, cwd=self.base, **self._as, **kw)
        if proc.returncode != 0:
            raise TerminalError(f"{Path(args[0]).name} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def start(self) -> LocalPostgres:
        if self._as:
            os.chown(self.base, self._as["user"], self._as["group"])
        os.chmod(self.base, 0o755)
        if not (self.datadir / "PG_VERSION").exists():
            self._cmd(
                str(self.bin / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            with open(self.datadir / "postgresql.auto.conf", "a") as f:
                for k, v in self.settings.items():
                    f.write(f"{k} = {v}\n")
                f.write(f"port = {self.port}\nunix_socket_directories = '{self.base}'\n")
        self._cmd(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.started = True
        return self

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            subprocess.run(
                [str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
                capture_output=True,
                cwd=self.base,
                **self._as,
            )
            self.started = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
