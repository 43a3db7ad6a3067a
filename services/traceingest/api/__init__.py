"""Trace-ingest's gRPC surface: protobuf in and out, domain inside."""
