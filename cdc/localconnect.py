"""A throwaway Kafka Connect standalone worker running the genuine Debezium PostgreSQL connector (3.6.1.Final).

Used by the interoperability tests and the benchmarks: pos-cdc reads the topics the real Debezium writes, and
its own events are compared with Debezium's for the same POS changes. The jars are Kafka Connect's (the same
Kafka version as the local broker) and Debezium's, from Maven Central, which `scripts/setup.sh
--with-test-tools` copies into `.cache/kafka/connect-libs` (scripts/kafka/pom.xml, profile `connect`); they are
run with the machine's Java 17: `java -cp 'connect-libs/*' org.apache.kafka.connect.cli.ConnectStandalone
worker.properties connector.properties`, as a child process, logging to files in its temp dir.

Offsets go to a file (`offsets.dat`) that survives `stop()`/`kill()` and the next `start()`, so a restart
resumes where Debezium's last offset flush left it (and, after a kill, replays what it sent since: Debezium is
at least once). `start()` returns once the REST API reports the connector and its task RUNNING; a task that
FAILED is a TerminalError with Debezium's trace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path

from cdc.errors import TerminalError
from cdc.localkafka import KAFKA_VERSION, find_java, kill_quietly, log_tail, terminate
from cdc.localpg import free_port

DEBEZIUM_VERSION = "3.6.1.Final"
LIBS_ENV = "POS_CDC_CONNECT_LIBS"
DEFAULT_LIBS = Path(__file__).resolve().parents[1] / ".cache" / "kafka" / "connect-libs"
FETCHED_STAMP = ".fetched"
REQUIRED_JARS = (
    f"connect-runtime-{KAFKA_VERSION}.jar",
    f"debezium-connector-postgres-{DEBEZIUM_VERSION}.jar",
)
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
JVM_OPTS = ["-Xms128m", "-Xmx768m", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"
POSTGRES_CONNECTOR = "io.debezium.connector.postgresql.PostgresConnector"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = org.apache.kafka
logger.kafka.level = WARN
logger.connect.name = org.apache.kafka.connect.runtime.WorkerSourceTask
logger.connect.level = INFO
"""


def libs_dir() -> Path:
    return Path(os.environ.get(LIBS_ENV) or DEFAULT_LIBS)


def ensure_jars() -> Path:
    """The directory of Kafka Connect's and Debezium's jars, or a TerminalError that says how to get them."""
    libs = libs_dir()
    missing = [j for j in REQUIRED_JARS if not (libs / j).exists()]
    if missing or not (libs / FETCHED_STAMP).exists():
        what = ", ".join(missing) if missing else f"{FETCHED_STAMP} (an unfinished fetch)"
        raise TerminalError(
            f"Kafka Connect {KAFKA_VERSION} / Debezium {DEBEZIUM_VERSION} jars are missing from {libs} ({what}): "
            f"run scripts/setup.sh --with-test-tools, which fetches them with Maven, or set {LIBS_ENV} to a "
            "directory holding them"
        )
    return libs


def debezium_postgres(
    name: str,
    dsn: dict[str, str | int],
    tables: list[str],
    topic_prefix: str = "dbz",
    **options: str | int | bool,
) -> dict[str, str]:
    """The connector properties of a Debezium PostgreSQL connector (pgoutput) on the database `dsn` (host,
    port, user, dbname[, password]) capturing `tables`; `options` are Debezium's own names with the dots
    written as underscores (decimal_handling_mode="string") and override the defaults here."""
    props: dict[str, str | int | bool] = {
        "name": name,
        "connector.class": POSTGRES_CONNECTOR,
        "tasks.max": 1,
        "database.hostname": dsn["host"],
        "database.port": dsn["port"],
        "database.user": dsn["user"],
        "database.password": dsn.get("password", ""),
        "database.dbname": dsn["dbname"],
        "topic.prefix": topic_prefix,
        "plugin.name": "pgoutput",
        "slot.name": f"{name}_slot",
        "publication.name": f"{name}_pub",
        "publication.autocreate.mode": "filtered",
        "table.include.list": ",".join(tables),
        "snapshot.mode": "initial",
    }
    for k, v in options.items():
        props[k.replace("_", ".")] = v
    return {k: _prop(v) for k, v in props.items()}


def _prop(v: str | int | bool) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


class LocalConnect:
    """One Kafka Connect standalone worker on loopback running one connector (`connector`: its properties).

    `schemas` is JsonConverter's schemas.enable for keys and values (Debezium's default: true).
    """

    def __init__(
        self,
        bootstrap: str,
        connector: dict[str, str],
        schemas: bool = True,
        base_dir: str | None = None,
        worker: dict[str, str] | None = None,
    ):
        self.libs = ensure_jars()
        self.java = find_java()
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pos-cdc-connect-"))
        self.bootstrap = bootstrap
        self.connector = dict(connector)
        self.name = self.connector["name"]
        self.rest_port = free_port()
        self.worker = {
            "bootstrap.servers": bootstrap,
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": _prop(schemas),
            "value.converter.schemas.enable": _prop(schemas),
            "offset.storage.file.filename": str(self.base / "offsets.dat"),
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://127.0.0.1:{self.rest_port}",
            "plugin.path": "",
            **(worker or {}),
        }
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.base / "connect.log"

    def start(self, timeout: float = START_TIMEOUT) -> LocalConnect:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.base.mkdir(parents=True, exist_ok=True)
        worker, conn = self.base / "worker.properties", self.base / "connector.properties"
        worker.write_text("".join(f"{k}={v}\n" for k, v in self.worker.items()))
        conn.write_text("".join(f"{k}={v}\n" for k, v in self.connector.items()))
        (self.base / "log4j2.properties").write_text(LOG4J2.format(log=self.log_path))
        cmd = [
            self.java,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.base / 'log4j2.properties'}",
            "-cp",
            str(self.libs / "*"),
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(worker),
            str(conn),
        ]
        with open(self.base / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, kill_quietly, self.proc)
        try:
            self._wait_running(time.monotonic() + timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def status(self) -> dict | None:
        """The REST API's /connectors/NAME/status, or None while it does not answer."""
        url = f"http://127.0.0.1:{self.rest_port}/connectors/{self.name}/status"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _wait_running(self, deadline: float) -> None:
        last = "no answer from the REST API"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else "?"
                raise TerminalError(
                    f"Kafka Connect exited with code {code} while starting:\n{self.log_tail()}"
                )
            st = self.status()
            if st is not None:
                tasks = st.get("tasks") or []
                failed = [t for t in tasks if t.get("state") == "FAILED"]
                if st.get("connector", {}).get("state") == "FAILED" or failed:
                    trace = (failed[0] if failed else st["connector"]).get("trace", "")
                    raise TerminalError(f"Debezium connector {self.name} FAILED: {trace[:3000]}")
                if (
                    st.get("connector", {}).get("state") == "RUNNING"
                    and tasks
                    and all(t.get("state") == "RUNNING" for t in tasks)
                ):
                    return
                last = json.dumps(st)[:500]
            time.sleep(0.3)
        raise TerminalError(
            f"Kafka Connect did not report {self.name} RUNNING in time (last: {last}):\n{self.log_tail()}"
        )

    def assert_running(self) -> None:
        """Raises with Debezium's trace when the worker died or the task failed since start()."""
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"Kafka Connect is not running:\n{self.log_tail()}")
        st = self.status() or {}
        failed = [t for t in st.get("tasks") or [] if t.get("state") == "FAILED"]
        if failed:
            raise AssertionError(f"Debezium task FAILED: {failed[0].get('trace', '')[:3000]}")

    def stored_offset(self) -> dict | None:
        """Debezium's last flushed source offset (the JSON inside Connect's offsets file), or None before the
        first flush. A SIGKILL before that makes the next start() begin again from empty offsets (a new
        snapshot, whose positions restart below what a sink applied: docs/kafka-events.md)."""
        path = Path(self.worker["offset.storage.file.filename"])
        if not path.exists():
            return None
        text = path.read_bytes().decode("latin-1")
        start = text.rfind('{"')
        end = text.rfind("}")
        if start < 0 or end < start:
            return None
        try:
            return json.loads(text[start : end + 1])
        except ValueError:
            return None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail([self.base / "stdout.log", self.log_path], lines, self.base)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """A clean stop (SIGTERM: the worker flushes Debezium's offsets and closes the replication stream)."""
        terminate(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: what Debezium sent after its last offset flush is sent again on start()."""
        if self.proc is not None:
            kill_quietly(self.proc)
        self.proc = None

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalConnect:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
