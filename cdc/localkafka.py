"""A throwaway local Apache Kafka broker (4.1, KRaft, one node that is broker and controller) in a temp dir.

Used by the test suite, the demo's Kafka mode and the benchmarks. The broker is Apache Kafka's own jars from
Maven Central, which scripts/setup.sh copies into `.cache/kafka/libs` (scripts/kafka/pom.xml), run with the
machine's Java 17: `kafka.tools.StorageTool format` once, then `java -cp 'libs/*' kafka.Kafka
server.properties` as a child process. It listens on loopback only, on free ports, and logs to files in its
temp dir (`server.log`, and `stdout.log` for what the JVM prints before logging is set up).

The jars are never downloaded from here: a 54 MB Maven fetch hidden in a test fixture would be slow to fail,
would race when two test runs start at once, and needs `mvn` anyway; scripts/setup.sh is the one place that
installs things, and scripts/test.sh and scripts/demo.sh run it first.

`restart()` keeps the ports and the data dir, so topics, messages and committed group offsets survive it, as
they would a broker restart in production; `kill()` is a SIGKILL, after which `start()` runs Kafka's log
recovery on the same data.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from pathlib import Path

from cdc.errors import TerminalError
from cdc.localkafka_tls import SecureListeners
from cdc.localpg import free_port
from cdc.localtls import TlsFiles

KAFKA_VERSION = "4.1.0"
LIBS_ENV = "POS_CDC_KAFKA_LIBS"
DEFAULT_LIBS = Path(__file__).resolve().parents[1] / ".cache" / "kafka" / "libs"
FETCHED_STAMP = ".fetched"  # written by scripts/setup.sh once the whole classpath is copied
REQUIRED_JARS = (f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-tools-{KAFKA_VERSION}.jar")
START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
PROBE_GROUP = "pos-cdc-localkafka-probe"  # never joined: start() asks the coordinator for its offsets
JVM_OPTS = ["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]

# One node, so every internal topic has one replica; tests and the demo want a group's first join to be
# immediate rather than after Kafka's 3 s wait for more members. After a SIGKILL the restarted controller
# keeps the dead broker's registration until its session times out (9 s by default) before it takes the
# new one: a 5 s session (1 s heartbeats, on loopback) shortens that wait. One partition for committed
# offsets, so that start() can tell with one probe when the group coordinator is ready. Flushing is left to the OS
# (Kafka's default): an acknowledged message is in the page cache, which a killed broker process does not
# take with it; only a machine crash would need `log.flush.interval.messages=1`.
SETTINGS = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "broker.heartbeat.interval.ms": "1000",
    "broker.session.timeout.ms": "5000",
    "num.network.threads": "2",
    "num.io.threads": "4",
}

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = org.apache.kafka.controller
logger.controller.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def libs_dir() -> Path:
    return Path(os.environ.get(LIBS_ENV) or DEFAULT_LIBS)


def ensure_jars() -> Path:
    """The directory of Kafka's jars, or a TerminalError that says how to get them."""
    libs = libs_dir()
    missing = [j for j in REQUIRED_JARS if not (libs / j).exists()]
    if missing or not (libs / FETCHED_STAMP).exists():
        what = ", ".join(missing) if missing else f"{FETCHED_STAMP} (an unfinished fetch)"
        raise TerminalError(
            f"Apache Kafka {KAFKA_VERSION} jars are missing from {libs} ({what}): run scripts/setup.sh, which "
            "fetches them with Maven (apt-get install maven openjdk-17-jre-headless if it cannot), or set "
            f"{LIBS_ENV} to a directory holding them"
        )
    return libs


def find_java() -> str:
    """$JAVA_HOME/bin/java or java on PATH, checked to be Java 17 or newer (Kafka 4's brokers need 17)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
    java = java or shutil.which("java")
    if not java:
        raise TerminalError(
            "no java found: Kafka's broker needs Java 17: apt-get install openjdk-17-jre-headless "
            "(scripts/setup.sh does), or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(m.group(1)) if m else 0
    if major == 1 and m and m.group(2):  # "1.8.0_..." style
        major = int(m.group(2))
    if major < 17:
        raise TerminalError(
            f"{java} is Java {major or '?'}; Kafka's broker needs Java 17 or newer: "
            "apt-get install openjdk-17-jre-headless, or set JAVA_HOME"
        )
    return java


class LocalKafka:
    """One Kafka broker+controller on 127.0.0.1 with its data in `base/data`.

    `bootstrap` is the "host:port" a client connects to. Ports and the data dir stay the same across
    `stop()`/`kill()` and the next `start()`.
    """

    def __init__(
        self,
        base_dir: str | None = None,
        port: int | None = None,
        settings: dict | None = None,
        tls: TlsFiles | None = None,
        scram_users: dict[str, str] | None = None,
    ):
        self.libs = ensure_jars()
        self.java = find_java()
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="pos-cdc-kafka-"))
        self.datadir = self.base / "data"
        self.port = port or free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        # tls: an SSL listener and, with scram_users, a SASL_SSL one (cdc/localkafka_tls.py)
        self.secure = SecureListeners(self.base, tls, scram_users, {self.port, self.controller_port})
        self.settings = {**SETTINGS, **(settings or {})}
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # how long the last start() took, for reports

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ssl_bootstrap(self) -> str:
        """host:port of the SSL listener (LocalKafka(tls=...))."""
        return f"127.0.0.1:{self.secure.ssl_port}"

    @property
    def sasl_bootstrap(self) -> str:
        """host:port of the SASL_SSL listener (SCRAM-SHA-512; LocalKafka(tls=..., scram_users=...))."""
        return f"127.0.0.1:{self.secure.sasl_port}"

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def _classpath(self) -> str:
        return str(self.libs / "*")

    def _write_config(self) -> Path:
        extra = self.secure.listeners()
        props = {
            **self.settings,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}"
            + "".join(f",{x}" for x in extra),
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}" + "".join(f",{x}" for x in extra),
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.datadir),
            **self.secure.properties(),
        }
        path = self.base / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.base / "log4j2.properties").write_text(LOG4J2.format(log=self.log_path))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            self.java,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.base / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.base}",
            "-cp",
            self._classpath(),
            main,
            *args,
        ]

    def _format(self, config: Path) -> None:
        """Formats the data dir once (a new cluster id); later starts find meta.properties and skip this."""
        if (self.datadir / "meta.properties").exists():
            return
        cluster_id = _kafka_uuid()
        proc = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--config",
                str(config),
                "--cluster-id",
                cluster_id,
                *self.secure.format_args(),
            ),
            capture_output=True,
            text=True,
            cwd=self.base,
        )
        if proc.returncode != 0:
            raise TerminalError(
                f"kafka-storage format failed: {(proc.stderr.strip() or proc.stdout.strip())[-2000:]}"
            )

    def start(self, timeout: float = START_TIMEOUT) -> LocalKafka:
        if self.proc is not None and self.proc.poll() is None:
            return self
        t0 = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._format(config)
        with open(self.base / "stdout.log", "ab") as out:
            # a session of its own: a Ctrl-C in the demo's terminal reaches the demo, which then stops the
            # broker after its own shutdown, rather than the broker going away under it
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(config)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                start_new_session=True,
            )
        # a script that dies on an exception without destroy() must not leave a 1 GB JVM behind
        self._finalizer = weakref.finalize(self, kill_quietly, self.proc)
        try:
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.kill()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        """Waits until the broker answers a metadata request naming itself, unfenced (it then takes produce,
        fetch and topic creation), and until its group coordinator has loaded the committed offsets: after a
        restart it first answers offset requests with COORDINATOR_LOAD_IN_PROGRESS, which kafka-python's
        admin client raises instead of retrying (a test reading offsets right after restart() would fail).
        One __consumer_offsets partition (SETTINGS), so one probe group covers every group.

        The client listener opens only at the end of the broker's start, so a plain connect is tried
        first: a kafka-python client made before that would sit in its own 30 s bootstrap wait."""
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else "?"
                raise TerminalError(
                    f"the Kafka broker exited with code {code} while starting:\n{self.log_tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                admin = self.admin(bootstrap_timeout_ms=3000, request_timeout_ms=5000)
            except Exception as e:  # noqa: BLE001 - not listening yet
                last = repr(e)
                time.sleep(0.2)
                continue
            try:
                brokers = admin.describe_cluster().get("brokers") or []
                if any(b.get("port") == self.port and not b.get("is_fenced") for b in brokers):
                    admin.list_group_offsets(PROBE_GROUP)  # raises while the coordinator loads
                    return
                last = f"metadata lists brokers {brokers}"
            except Exception as e:  # noqa: BLE001 - starting up
                last = repr(e)
            finally:
                admin.close()
            time.sleep(0.2)
        raise TerminalError(
            f"the Kafka broker at {self.bootstrap} did not answer within the start timeout (last: {last}):\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """The end of the broker's log (or of the JVM's output, when it died before logging began)."""
        return log_tail([self.base / "stdout.log", self.log_path], lines, self.base)

    def admin(self, **kw):
        """A kafka-python KafkaAdminClient for this broker (the caller closes it)."""
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="pos-cdc-localkafka", **kw)

    def create_topic(self, name: str, partitions: int = 1, config: dict | None = None) -> str:
        """Creates a topic with one replica and waits until every partition has a leader, so a producer's
        first send does not meet LEADER_NOT_AVAILABLE."""
        from kafka.admin import NewTopic

        with self.admin() as admin:
            admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})], timeout_ms=30000)
            admin.wait_for_topics([name], timeout_ms=30000)
        return name

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """A clean shutdown (SIGTERM: Kafka flushes its logs and writes its recovery checkpoints)."""
        terminate(self.proc, timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash: the next start() recovers the logs from the last checkpoint."""
        if self.proc is not None:
            kill_quietly(self.proc)
        self.proc = None

    def restart(self, timeout: float = START_TIMEOUT) -> LocalKafka:
        """A clean stop and a start on the same ports and data: topics, messages and offsets are kept."""
        self.stop()
        return self.start(timeout)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()


def kill_quietly(proc: subprocess.Popen) -> None:
    """SIGKILL a child process still running, and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def terminate(proc: subprocess.Popen | None, timeout: float) -> None:
    """SIGTERM a child process (a clean shutdown), SIGKILL if it has not exited within `timeout` s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_quietly(proc)


def log_tail(paths: list[Path], lines: int, base: Path) -> str:
    """The last `lines` of each non-empty log file, headed by its path."""
    parts = []
    for path in paths:
        if path.exists() and path.stat().st_size:
            text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
            parts.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log in {base})"


def _kafka_uuid() -> str:
    """A cluster id as Kafka writes it: 16 random bytes in URL-safe base64 without padding; like Kafka's own
    Uuid.randomUuid(), never one starting with "-", which the command line would take for an option."""
    import base64

    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text
