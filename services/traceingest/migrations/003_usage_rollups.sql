-- Rollups per project x developer x provider x model x agent, per hour and per day, kept
-- by materialized views on every insert into usage_events. Sums only: SummingMergeTree
-- folds rows at merge time, so readers still sum() and GROUP BY.
--
-- A view sees every inserted block, copies included; ReplacingMergeTree's collapse at
-- merge time does not reach it. Copies are kept out before they are inserted (the
-- consumer drops events already stored, and each batch carries an insert deduplication
-- token); the dedup window on these tables drops a replayed block in the view's path too.

CREATE TABLE IF NOT EXISTS {db}.usage_hourly
(
    org LowCardinality(String),
    project String,
    hour DateTime('UTC'),
    developer String,
    provider LowCardinality(String),
    model LowCardinality(String),
    agent String,
    requests UInt64,
    input_tokens Int64,
    cached_input_tokens Int64,
    output_tokens Int64,
    reasoning_tokens Int64,
    cost_nanos Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (org, project, hour, developer, provider, model, agent)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE TABLE IF NOT EXISTS {db}.usage_daily
(
    org LowCardinality(String),
    project String,
    day Date,
    developer String,
    provider LowCardinality(String),
    model LowCardinality(String),
    agent String,
    requests UInt64,
    input_tokens Int64,
    cached_input_tokens Int64,
    output_tokens Int64,
    reasoning_tokens Int64,
    cost_nanos Int64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org, project, day, developer, provider, model, agent)
SETTINGS non_replicated_deduplication_window = 10000;

-- Backfill from the deduplicated raw rows, once: only while a rollup is still empty.
-- trace-ingest applies migrations before it consumes, so no insert races the backfill.
INSERT INTO {db}.usage_hourly
SELECT org, project, toStartOfHour(occurred_at) AS hour, developer, provider, model, agent,
    count(), sum(input_tokens), sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens), sum(cost_nanos)
FROM {db}.usage_events FINAL
WHERE (SELECT count() FROM {db}.usage_hourly) = 0
GROUP BY org, project, hour, developer, provider, model, agent;

INSERT INTO {db}.usage_daily
SELECT org, project, toDate(occurred_at) AS day, developer, provider, model, agent,
    count(), sum(input_tokens), sum(cached_input_tokens), sum(output_tokens), sum(reasoning_tokens), sum(cost_nanos)
FROM {db}.usage_events FINAL
WHERE (SELECT count() FROM {db}.usage_daily) = 0
GROUP BY org, project, day, developer, provider, model, agent;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_hourly_mv TO {db}.usage_hourly AS
SELECT org, project, toStartOfHour(occurred_at) AS hour, developer, provider, model, agent,
    count() AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos
FROM {db}.usage_events
GROUP BY org, project, hour, developer, provider, model, agent;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_daily_mv TO {db}.usage_daily AS
SELECT org, project, toDate(occurred_at) AS day, developer, provider, model, agent,
    count() AS requests,
    sum(input_tokens) AS input_tokens,
    sum(cached_input_tokens) AS cached_input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(reasoning_tokens) AS reasoning_tokens,
    sum(cost_nanos) AS cost_nanos
FROM {db}.usage_events
GROUP BY org, project, day, developer, provider, model, agent;
