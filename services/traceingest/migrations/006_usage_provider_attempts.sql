-- UsageEvent.provider_attempts: provider attempts (retries and fallbacks) behind one settled
-- call. Additive with a default, so older rows and producers stay valid. Event ids from here
-- on are UUIDv7 text (see docs/COSTS.md); the column stays String, as older rows hold request ids.
ALTER TABLE {db}.usage_events
    ADD COLUMN IF NOT EXISTS provider_attempts UInt32 DEFAULT 0 AFTER attempt;
