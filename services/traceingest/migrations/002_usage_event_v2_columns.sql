-- UsageEvent schema version 2: cache, reasoning, config version, latency, attempt.
-- Additive with defaults, so rows and producers of version 1 stay valid.
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS cached_input_tokens Int64 DEFAULT 0 AFTER output_tokens,
    ADD COLUMN IF NOT EXISTS reasoning_tokens Int64 DEFAULT 0 AFTER cached_input_tokens,
    ADD COLUMN IF NOT EXISTS cache_write_tokens Int64 DEFAULT 0 AFTER reasoning_tokens,
    ADD COLUMN IF NOT EXISTS config_version String DEFAULT '' AFTER agent,
    ADD COLUMN IF NOT EXISTS latency_ms Int64 DEFAULT 0 AFTER config_version,
    ADD COLUMN IF NOT EXISTS attempt UInt32 DEFAULT 0 AFTER latency_ms,
    ADD COLUMN IF NOT EXISTS schema_version UInt8 DEFAULT 1 AFTER attempt;

-- Finds an event id without its (org, project) prefix: the consumer's check for copies.
ALTER TABLE {db}.usage_events ADD INDEX IF NOT EXISTS event_id_bloom event_id TYPE bloom_filter GRANULARITY 4;

-- Keeps the hashes of the last inserts, so a batch inserted again with the same
-- insert_deduplication_token (a retry whose first attempt landed) is dropped before the
-- rollup views see it. ReplacingMergeTree alone collapses copies only at merge time.
ALTER TABLE {db}.usage_events MODIFY SETTING non_replicated_deduplication_window = 10000;
