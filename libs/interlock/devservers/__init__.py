"""Real Kafka, ClickHouse, Redis, PostgreSQL and Jaeger on loopback for tests, CI and `interlock up`.

Kafka runs from Maven Central jars on the JDK, ClickHouse from the chdb-core wheel,
Redis from the system's redis-server, PostgreSQL from the system's postgresql
binaries and Jaeger from its Go module built with `go`; `python -m interlock.devservers`
runs each in the foreground.
"""

from interlock.devservers._ports import free_port
from interlock.devservers._process import DevServerError, ManagedProcess
from interlock.devservers.clickhouse import ClickHouseServer
from interlock.devservers.jaeger import JaegerServer, ensure_jaeger_binary
from interlock.devservers.kafka import KafkaBroker, default_cache_dir, ensure_kafka_classpath
from interlock.devservers.postgres import PostgresServer
from interlock.devservers.redis import RedisServer

__all__ = [
    "ClickHouseServer",
    "DevServerError",
    "JaegerServer",
    "KafkaBroker",
    "ManagedProcess",
    "PostgresServer",
    "RedisServer",
    "default_cache_dir",
    "ensure_jaeger_binary",
    "ensure_kafka_classpath",
    "free_port",
]
