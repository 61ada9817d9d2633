-- The same schema as migrations/sqlite, in PostgreSQL's dialect.
CREATE TABLE IF NOT EXISTS analytics_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type    TEXT   NOT NULL,
    visitor_id    TEXT   NOT NULL,
    event_data    JSONB  NOT NULL DEFAULT '{}',
    page_url      TEXT,
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS analytics_events_created_at ON analytics_events (created_at_ms);

CREATE TABLE IF NOT EXISTS visitor_salts (
    day  TEXT PRIMARY KEY,
    salt BYTEA NOT NULL
);
