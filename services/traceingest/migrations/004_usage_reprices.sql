-- Costs recomputed from stored tokens by `interlock costs reprice`; the raw events keep
-- the cost billed at the time. The newest repricing of an event wins (FINAL).
CREATE TABLE IF NOT EXISTS {db}.usage_reprices
(
    event_id String,
    org LowCardinality(String),
    project String,
    occurred_at DateTime64(3, 'UTC'),
    cost_nanos Int64,
    price_source LowCardinality(String),
    repriced_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(repriced_at)
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (org, project, event_id);

-- Span attribute maps are the bodies: cleared after 30 days, the span rows stay.
ALTER TABLE {db}.spans
    MODIFY COLUMN attributes Map(String, String) TTL toDateTime(start_time) + INTERVAL 30 DAY;
