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
from cdc.localtls import TlsFiles

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


# tls: TCP only over TLS, every role by password (SCRAM); the cluster's own admin connections use the socket
TLS_HBA = """\
local all all trust
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl replication all 127.0.0.1/32 scram-sha-256
"""


class LocalPostgres:
    """`tls` (cdc/localtls.py) makes a cluster that takes TCP connections only over TLS and only with a
    password (pg_hba `hostssl ... scram-sha-256`, nothing for plain TCP): `execute` then goes through the
    cluster's Unix socket, and the connectors' roles need passwords."""

    def __init__(
        self,
        base_dir: str | None = None,
        port: int | None = None,
        settings: dict | None = None,
        tls: TlsFiles | None = None,
    ):
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pos-cdc-pg-"))
        self.tls = tls
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
            if self.tls is not None:
                self._setup_tls()
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

    def _setup_tls(self) -> None:
        """The server's certificate and key in the data dir (the key readable by the server's user only),
        ssl=on, and pg_hba.conf's TLS_HBA."""
        assert self.tls is not None
        for src, name in ((self.tls.cert, "server.crt"), (self.tls.key, "server.key")):
            dest = self.datadir / name
            shutil.copyfile(src, dest)
            if self._as:
                os.chown(dest, self._as["user"], self._as["group"])
            dest.chmod(0o600)
        with open(self.datadir / "postgresql.auto.conf", "a") as f:
            f.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            f.write("password_encryption = 'scram-sha-256'\n")
        (self.datadir / "pg_hba.conf").write_text(TLS_HBA)

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

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """The superuser's connection, for set-up: over the Unix socket on a `tls` cluster."""
        if self.tls is None:
            return self.dsn(dbname)
        return f"host={self.base} port={self.port} user=postgres dbname={dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(self.admin_dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def create_database(self, name: str) -> str:
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
