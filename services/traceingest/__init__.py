"""Trace-ingest: OTLP spans and usage events into ClickHouse, and queries over them."""
