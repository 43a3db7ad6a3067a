"""Pure trace-ingest logic: stored rows, cost query validation, secret redaction."""

from interlock.services.traceingest.domain.spans import (
    REDACTED,
    SpanRecord,
    is_secret_key,
    is_secret_value,
    parse_trace_id,
    redact_attributes,
)
from interlock.services.traceingest.domain.usage import (
    ALLOWED_DIMENSIONS,
    MAX_SCHEMA_VERSION,
    CostQuery,
    CostRow,
    Dimension,
    UsageRecord,
)

__all__ = [
    "ALLOWED_DIMENSIONS",
    "MAX_SCHEMA_VERSION",
    "REDACTED",
    "CostQuery",
    "CostRow",
    "Dimension",
    "SpanRecord",
    "UsageRecord",
    "is_secret_key",
    "is_secret_value",
    "parse_trace_id",
    "redact_attributes",
]
