-- maicivy's `analytics_events` layout (CONTRACT.md, "Sharing maicivy's PostgreSQL
-- database"), in SQLite's types: the same column names as on PostgreSQL, so that one
-- query text serves both.
--
-- UUIDs are hyphenated lowercase TEXT. Times are TEXT in UTC, in ONE fixed-width
-- format, 'YYYY-MM-DD HH:MM:SS.ffffff' (microseconds, as PostgreSQL keeps): SQLite
-- has no time type, and with one width and one zone, comparing and sorting the texts
-- is comparing and sorting the times, so range queries use the index.
--
-- The rows of the earlier layout (0001: integer ids, Unix milliseconds) are all
-- moved here. sqlx runs this file in one transaction: it converts all or nothing.
CREATE TABLE analytics_events_maicivy (
    id               TEXT    NOT NULL PRIMARY KEY,
    visitor_id       TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    event_data       TEXT,
    page_url         TEXT,
    referrer         TEXT,
    session_duration INTEGER DEFAULT 0,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'),
    deleted_at       TEXT
);

-- New ids are random (version 4) UUIDs made in SQL. Times are built from whole
-- seconds and the millisecond remainder separately (no floating point, so every
-- millisecond is kept exactly), with a floor remainder so that times before 1970
-- would convert too.
INSERT INTO analytics_events_maicivy
    (id, visitor_id, event_type, event_data, page_url, created_at, updated_at)
SELECT
    lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'
        || substr(lower(hex(randomblob(2))), 2) || '-'
        || substr('89ab', 1 + (random() & 3), 1) || substr(lower(hex(randomblob(2))), 2)
        || '-' || lower(hex(randomblob(6))),
    visitor_id, event_type, event_data, page_url, at, at
FROM (
    SELECT id AS old_id, visitor_id, event_type, event_data, page_url,
        strftime('%Y-%m-%d %H:%M:%S', (created_at_ms - ms) / 1000, 'unixepoch')
            || '.' || printf('%03d', ms) || '000' AS at
    FROM (SELECT *, ((created_at_ms % 1000) + 1000) % 1000 AS ms FROM analytics_events)
)
ORDER BY old_id;

DROP TABLE analytics_events;
ALTER TABLE analytics_events_maicivy RENAME TO analytics_events;

-- Ranges of time (every read route) and the timeline's order.
CREATE INDEX maicivy_analytics_events_created_at ON analytics_events (created_at, id);
-- One event type over a range: letters, heatmap, themes, pages.
CREATE INDEX maicivy_analytics_events_type_created_at
    ON analytics_events (event_type, created_at);
