"""Real Kafka, ClickHouse and Redis on loopback for tests, CI and `interlock up`.

Kafka runs from Maven Central jars on the JDK, ClickHouse from the chdb-core wheel and
Redis from the system's redis-server; `python -m interlock.devservers` runs each in the
foreground.
"""

from interlock.devservers._ports import free_port
from interlock.devservers._process import DevServerError, ManagedProcess
from interlock.devservers.clickhouse import ClickHouseServer
from interlock.devservers.kafka import KafkaBroker, default_cache_dir, ensure_kafka_classpath
from interlock.devservers.redis import RedisServer

__all__ = [
    "ClickHouseServer",
    "DevServerError",
    "KafkaBroker",
    "ManagedProcess",
    "RedisServer",
    "default_cache_dir",
    "ensure_kafka_classpath",
    "free_port",
]
