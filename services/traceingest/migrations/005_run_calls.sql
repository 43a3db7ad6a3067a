-- Recorded LLM calls of agent runs: the router's redacted request and answer bodies with
-- digests of the unredacted request, for `interlock traces` and `interlock replay`.
-- Bodies are kept 30 days (change with ALTER TABLE run_calls MODIFY TTL ...); spans keep
-- only the call's metadata.
CREATE TABLE IF NOT EXISTS {db}.run_calls
(
    run_id String,
    trace_id String,
    span_id String,
    org LowCardinality(String),
    project String,
    agent String,
    step String,
    request_id String,
    request_model LowCardinality(String),
    response_model LowCardinality(String),
    provider LowCardinality(String),
    request_json String CODEC(ZSTD(3)),
    response_json String CODEC(ZSTD(3)),
    request_digest String,
    message_digests Array(String),
    input_tokens Int64,
    output_tokens Int64,
    cost_nanos Int64,
    latency_ms Float64,
    status LowCardinality(String),
    error String,
    config_version String,
    attempts Int64,
    start_time DateTime64(9, 'UTC'),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(start_time)
ORDER BY (org, project, run_id, trace_id, span_id)
TTL toDateTime(start_time) + INTERVAL 30 DAY;
