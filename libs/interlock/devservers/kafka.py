"""A single-node Apache Kafka 4.x broker (KRaft, broker+controller) run from Maven jars.

The jars come from Maven Central through `mvn` and are cached, so only the first
resolution on a machine touches the network.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from interlock.devservers._ports import LOOPBACK, free_port, port_open
from interlock.devservers._process import DevServerError, ManagedProcess, progress

KAFKA_VERSION = os.environ.get("INTERLOCK_KAFKA_VERSION", "4.1.1")
# Kafka's pom leaves the log4j2 backend and the slf4j (1.x) binding to the distribution.
_LOG4J_VERSION = "2.24.3"
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_MARKER = "classpath.txt"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.interlock.devservers</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.state.name = state.change.logger
logger.state.level = warn
logger.clients.name = org.apache.kafka.clients
logger.clients.level = warn
"""


def default_cache_dir() -> Path:
    """$INTERLOCK_CACHE, else ~/.cache/interlock (the Makefile exports the same)."""
    env = os.environ.get("INTERLOCK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "interlock"


def ensure_kafka_classpath(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> list[Path]:
    """Return the broker's jars, resolving them with Maven on first use only."""
    root = (cache_dir or default_cache_dir()) / f"kafka-{version}"
    root.mkdir(parents=True, exist_ok=True)
    marker = root / _MARKER
    # A lock so parallel test workers do not run Maven into the same folder.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _read_marker(marker)
        if cached is not None:
            return cached
        mvn = shutil.which("mvn")
        if mvn is None:
            raise DevServerError("kafka: `mvn` not found; install Maven (apt-get install maven)")
        progress(f"resolving Kafka {version} jars with Maven into {root} ...")
        (root / "pom.xml").write_text(_POM.format(kafka=version, log4j=_LOG4J_VERSION), encoding="utf-8")
        lib = root / "lib"
        shutil.rmtree(lib, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(root / "pom.xml"),
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DevServerError(
                f"kafka: Maven failed ({done.returncode}) resolving kafka_2.13:{version}:\n"
                f"{(done.stdout + done.stderr)[-4000:]}"
            )
        jars = sorted(lib.glob("*.jar"))
        if not any(j.name.startswith(f"kafka_2.13-{version}") for j in jars):
            raise DevServerError(f"kafka: Maven ran but kafka_2.13-{version}.jar is not in {lib}")
        # Written last: its presence means the folder is complete.
        tmp = marker.with_suffix(".tmp")
        tmp.write_text("".join(f"{j.name}\n" for j in jars), encoding="utf-8")
        tmp.replace(marker)
        progress(f"resolved {len(jars)} jars")
        return jars


def _read_marker(marker: Path) -> list[Path] | None:
    try:
        names = marker.read_text(encoding="utf-8").split()
    except OSError:
        return None
    jars = [marker.parent / "lib" / n for n in names]
    return jars if jars and all(j.is_file() for j in jars) else None


def _cluster_id() -> str:
    """KRaft wants a base64url UUID without padding, as `kafka-storage random-uuid` prints."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class KafkaBroker(ManagedProcess):
    """One KRaft node that is both broker and controller, listening on 127.0.0.1.

    Reusing a data_dir keeps topics and offsets: storage is formatted only once.
    """

    name = "kafka"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        controller_port: int | None = None,
        partitions: int = 1,
        heap: str = "512m",
        cache_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        java: str = "java",
        startup_timeout: float = 90.0,
    ) -> None:
        super().__init__(data_dir, startup_timeout)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.partitions = partitions
        self.heap = heap
        self.cache_dir = cache_dir
        self.version = version
        self.java = java
        self._classpath: list[Path] = []

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, self.controller_port)

    def _prepare(self) -> None:
        self._classpath = ensure_kafka_classpath(self.cache_dir, self.version)
        if shutil.which(self.java) is None:
            raise DevServerError(f"kafka: `{self.java}` not found; Kafka 4 needs a Java 17+ runtime")
        props = self.data_dir / "server.properties"
        props.write_text(self._properties(), encoding="utf-8")
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2, encoding="utf-8")
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format(props)

    def _properties(self) -> str:
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{LOOPBACK}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{self.port},CONTROLLER://{LOOPBACK}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            # One node: every internal topic must accept replication factor 1.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests join groups right away; the default 3 s delay would slow every one.
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "24",
        }
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _java_base(self) -> list[str]:
        return [
            self.java,
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            os.pathsep.join(str(j) for j in self._classpath),
        ]

    def _format(self, props: Path) -> None:
        # `--cluster-id=` form: a random id may start with "-", which would read as a flag.
        cluster_id = f"--cluster-id={_cluster_id()}"
        cmd = [*self._java_base(), "kafka.tools.StorageTool", "format", cluster_id, "-c", str(props)]
        done = subprocess.run(cmd, cwd=self.data_dir, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DevServerError(f"kafka: storage format failed:\n{(done.stdout + done.stderr)[-4000:]}")

    def _command(self) -> Sequence[str]:
        return [*self._java_base(), "kafka.Kafka", str(self.data_dir / "server.properties")]

    def _ready(self) -> bool:
        # An open port is not enough: the broker must answer with itself as a live node.
        return port_open(self.port) and _describe_cluster(self.bootstrap)


def _describe_cluster(bootstrap: str) -> bool:
    # In a fresh thread with its own loop, so start() also works under a running loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _describe_cluster_async(bootstrap)).result()


async def _describe_cluster_async(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        info = await admin.describe_cluster()
    except Exception:  # noqa: BLE001 - any failure just means "not yet"
        return False
    finally:
        # Closing a half-started client may fail too; nothing to report then.
        with contextlib.suppress(Exception):
            await admin.close()
    return bool(info.get("brokers")) and info.get("controller_id", -1) != -1
