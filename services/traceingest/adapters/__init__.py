"""Trace-ingest's I/O: ClickHouse, Kafka, the local spool."""
