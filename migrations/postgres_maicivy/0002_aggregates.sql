-- Aggregates kept at write time (src/store/aggregates.rs): every read route is
-- answered from these, or from an index range of analytics_events, instead of a
-- scan of every event of its period. Times are Unix microseconds (UTC), minutes
-- and hours Unix minutes and hours, days the number of days since 1970-01-01 of the
-- local date in the recorded time zone (`agg_state.timezone`): integers, so that
-- one query text serves SQLite and PostgreSQL. The same tables as
-- migrations/sqlite/0003_aggregates.sql.

-- One row. `timezone`: the zone whose days the day tables count (NULL until the
-- first start records it; another zone at start rebuilds them). Rows that this
-- server's writer did not count (rows that were there before, maicivy's Go rows)
-- are folded in by the fold task, in (created_at, id) order, up to
-- (`cursor_at`, `cursor_id`); the writer's own transactions are recorded in
-- `agg_own_xacts` so that the fold knows their rows by `xmin`. `ready`: the fold
-- has caught up once, routes read the aggregates.
CREATE TABLE IF NOT EXISTS agg_state (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    timezone        TEXT,
    ready           BIGINT  NOT NULL,
    boundary        BIGINT  NOT NULL,
    cursor_rowid    BIGINT  NOT NULL DEFAULT 0,
    cursor_at       BIGINT,
    cursor_id       TEXT,
    folded          BIGINT  NOT NULL DEFAULT 0,
    retained_before BIGINT
);
INSERT INTO agg_state (id, timezone, ready, boundary) VALUES (1, NULL, 0, 0)
ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS agg_own_xacts (
    xid BIGINT PRIMARY KEY,
    at  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS agg_own_xacts_at ON agg_own_xacts (at);

CREATE TABLE IF NOT EXISTS agg_day (
    day             BIGINT PRIMARY KEY,
    events          BIGINT NOT NULL,
    letters         BIGINT NOT NULL,
    motivation      BIGINT NOT NULL,
    anti_motivation BIGINT NOT NULL,
    visitors        BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS agg_day_type (
    day        BIGINT NOT NULL,
    event_type TEXT   NOT NULL,
    events     BIGINT NOT NULL,
    PRIMARY KEY (day, event_type)
);
CREATE TABLE IF NOT EXISTS agg_day_sketch (
    day    BIGINT PRIMARY KEY,
    sketch BYTEA  NOT NULL
);
CREATE TABLE IF NOT EXISTS agg_visitor_day (
    day        BIGINT NOT NULL,
    visitor_id TEXT   NOT NULL,
    last_seen  BIGINT NOT NULL,
    page_at    BIGINT,
    page_id    TEXT,
    page_url   TEXT,
    PRIMARY KEY (day, visitor_id)
);
CREATE INDEX IF NOT EXISTS agg_visitor_day_page_at ON agg_visitor_day (page_at)
    WHERE page_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS agg_minute (
    minute BIGINT PRIMARY KEY,
    events BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS agg_minute_page (
    minute   BIGINT NOT NULL,
    page_url TEXT   NOT NULL,
    views    BIGINT NOT NULL,
    PRIMARY KEY (minute, page_url)
);
CREATE TABLE IF NOT EXISTS agg_heat (
    level    INTEGER          NOT NULL,
    bucket   BIGINT           NOT NULL,
    page_url TEXT             NOT NULL,
    x        DOUBLE PRECISION NOT NULL,
    y        DOUBLE PRECISION NOT NULL,
    clicks   BIGINT           NOT NULL,
    PRIMARY KEY (level, bucket, page_url, x, y)
);
CREATE TABLE IF NOT EXISTS agg_theme (
    theme TEXT   PRIMARY KEY,
    views BIGINT NOT NULL
);
