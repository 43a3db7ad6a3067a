-- UsageEvent.request_id: the call's request id, shared by all its attempts (event ids are
-- UUIDv7 since migration 006). Rows written before it used the request id as event id.
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS request_id String DEFAULT event_id AFTER event_id;
