-- Events, newest read first by id. Times are Unix milliseconds (UTC), so that the
-- same range queries work on SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS analytics_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_type    TEXT    NOT NULL,
    visitor_id    TEXT    NOT NULL,
    event_data    TEXT    NOT NULL DEFAULT '{}',
    page_url      TEXT,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS analytics_events_created_at ON analytics_events (created_at_ms);

-- The secret of the cookieless visitor id, one per day; older ones are deleted so
-- that no id can be recomputed afterwards.
CREATE TABLE IF NOT EXISTS visitor_salts (
    day  TEXT PRIMARY KEY,
    salt BLOB NOT NULL
);
