-- Aggregates kept at write time (src/store/aggregates.rs): every read route is
-- answered from these, or from an index range of analytics_events, instead of a
-- scan of every event of its period. Times are Unix microseconds (UTC), minutes
-- and hours Unix minutes and hours, days the number of days since 1970-01-01 of the
-- local date in the recorded time zone (`agg_state.timezone`): integers, so that
-- one query text serves SQLite and PostgreSQL.

-- One row. `timezone`: the zone whose days the day tables count (NULL until the
-- first start records it; another zone at start rebuilds them). `boundary`: rows
-- with a rowid up to it were there before the aggregates existed, and the backfill
-- folds them in, in rowid order, up to `cursor_rowid`; later rows were counted by
-- the writer, in the transaction that stored them. `ready`: the backfill is done,
-- routes read the aggregates. `folded`: events the backfill has folded so far.
CREATE TABLE agg_state (
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
INSERT INTO agg_state (id, timezone, ready, boundary)
SELECT 1, NULL, CASE WHEN COUNT(*) = 0 THEN 1 ELSE 0 END, COALESCE(MAX(rowid), 0)
FROM analytics_events;

-- Per local day: events, letter_generate events (and of each letter_type that
-- maicivy reads), distinct visitors (exact).
CREATE TABLE agg_day (
    day             BIGINT PRIMARY KEY,
    events          BIGINT NOT NULL,
    letters         BIGINT NOT NULL,
    motivation      BIGINT NOT NULL,
    anti_motivation BIGINT NOT NULL,
    visitors        BIGINT NOT NULL
);
-- Events per type per local day.
CREATE TABLE agg_day_type (
    day        BIGINT NOT NULL,
    event_type TEXT   NOT NULL,
    events     BIGINT NOT NULL,
    PRIMARY KEY (day, event_type)
);
-- The HyperLogLog registers of each day's visitors (`Sketch::to_bytes`): a week or
-- a month is the union of its days' sketches.
CREATE TABLE agg_day_sketch (
    day    BIGINT PRIMARY KEY,
    sketch BLOB   NOT NULL
);
-- Each visitor of each day: when last seen, and their latest page_view of the day
-- (time, event id, page): today's visitors at start, who is on which page now.
CREATE TABLE agg_visitor_day (
    day        BIGINT NOT NULL,
    visitor_id TEXT   NOT NULL,
    last_seen  BIGINT NOT NULL,
    page_at    BIGINT,
    page_id    TEXT,
    page_url   TEXT,
    PRIMARY KEY (day, visitor_id)
);
CREATE INDEX agg_visitor_day_page_at ON agg_visitor_day (page_at) WHERE page_at IS NOT NULL;
-- Events per UTC minute, and page_view events per page per minute.
CREATE TABLE agg_minute (
    minute BIGINT PRIMARY KEY,
    events BIGINT NOT NULL
);
CREATE TABLE agg_minute_page (
    minute   BIGINT NOT NULL,
    page_url TEXT   NOT NULL,
    views    BIGINT NOT NULL,
    PRIMARY KEY (minute, page_url)
);
-- Clicks per rounded position per page ('' for none), per UTC minute (level 0),
-- hour (1) and day (2), and the same of all pages together (levels 3-5, page ''):
-- any "since" is a few dozen buckets.
CREATE TABLE agg_heat (
    level    INTEGER NOT NULL,
    bucket   BIGINT  NOT NULL,
    page_url TEXT    NOT NULL,
    x        REAL    NOT NULL,
    y        REAL    NOT NULL,
    clicks   BIGINT  NOT NULL,
    PRIMARY KEY (level, bucket, page_url, x, y)
);
-- Views of each CV theme, all time.
CREATE TABLE agg_theme (
    theme TEXT   PRIMARY KEY,
    views BIGINT NOT NULL
);
