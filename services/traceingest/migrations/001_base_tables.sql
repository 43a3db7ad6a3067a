-- The tables trace-ingest created before migrations were versioned; IF NOT EXISTS keeps
-- databases made by those versions as they are.

CREATE TABLE IF NOT EXISTS {db}.usage_events
(
    event_id String,
    org LowCardinality(String),
    project String,
    developer String,
    api_key_id String,
    provider LowCardinality(String),
    model LowCardinality(String),
    input_tokens Int64,
    output_tokens Int64,
    cost_nanos Int64,
    status LowCardinality(String),
    occurred_at DateTime64(3, 'UTC'),
    trace_id String,
    run_id String,
    agent String,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org, project, event_id);

CREATE TABLE IF NOT EXISTS {db}.spans
(
    trace_id String,
    span_id String,
    parent_span_id String,
    service_name LowCardinality(String),
    name String,
    kind LowCardinality(String),
    start_time DateTime64(9, 'UTC'),
    end_time DateTime64(9, 'UTC'),
    status_code LowCardinality(String),
    status_message String,
    scope_name LowCardinality(String),
    attributes Map(String, String),
    resource_attributes Map(String, String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(start_time)
ORDER BY (trace_id, span_id);
