-- maicivy's `analytics_events` layout (CONTRACT.md, "Sharing maicivy's PostgreSQL
-- database"). This migration set is recorded in `maicivy_analytics_migrations`, not
-- in `_sqlx_migrations`: the earlier set (BIGINT ids, `created_at_ms`) is recorded
-- there in deployments, could not run on maicivy's database, and is left alone.
--
-- Three databases meet this file:
-- 1. no `analytics_events`: maicivy's layout is created, without the foreign key to
--    a `visitors` table this server does not own;
-- 2. this server's earlier layout (it has `created_at_ms`): every row is moved to
--    maicivy's layout, with a new random UUID id;
-- 3. maicivy's own table: left as it is (TIMESTAMP or TIMESTAMPTZ columns, its
--    foreign key), only this server's indexes are added.
-- sqlx runs the file in one transaction: a conversion happens whole or not at all.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
        WHERE table_schema = current_schema()
          AND table_name = 'analytics_events' AND column_name = 'created_at_ms'
    ) THEN
        ALTER TABLE analytics_events RENAME TO analytics_events_earlier_layout;
        -- Index names are per schema: free those the new table will take.
        ALTER TABLE analytics_events_earlier_layout
            DROP CONSTRAINT IF EXISTS analytics_events_pkey;
        DROP INDEX IF EXISTS analytics_events_created_at;
    END IF;

    IF NOT EXISTS (
        SELECT 1 FROM information_schema.tables
        WHERE table_schema = current_schema() AND table_name = 'analytics_events'
    ) THEN
        -- Times are UTC wall-clock TIMESTAMPs, as maicivy's SQL migrations make them.
        CREATE TABLE analytics_events (
            id               UUID         PRIMARY KEY DEFAULT gen_random_uuid(),
            visitor_id       UUID         NOT NULL,
            event_type       VARCHAR(50)  NOT NULL,
            event_data       JSONB,
            page_url         VARCHAR(500),
            referrer         VARCHAR(500),
            session_duration INT          DEFAULT 0,
            created_at       TIMESTAMP    NOT NULL DEFAULT NOW(),
            updated_at       TIMESTAMP    NOT NULL DEFAULT NOW(),
            deleted_at       TIMESTAMP
        );
    END IF;

    IF EXISTS (
        SELECT 1 FROM information_schema.tables
        WHERE table_schema = current_schema()
          AND table_name = 'analytics_events_earlier_layout'
    ) THEN
        -- Milliseconds since the epoch, exactly (interval arithmetic, no floating
        -- point), as a UTC wall-clock time. The earlier layout's visitor ids were
        -- always UUID text, and its event types at most 50 characters; page URLs
        -- had no bound, and a longer one is cut rather than losing the event.
        INSERT INTO analytics_events
            (id, visitor_id, event_type, event_data, page_url, created_at, updated_at)
        SELECT gen_random_uuid(), CAST(visitor_id AS UUID), left(event_type, 50),
               event_data, left(page_url, 500),
               TIMESTAMP '1970-01-01 00:00:00' + created_at_ms * INTERVAL '1 millisecond',
               TIMESTAMP '1970-01-01 00:00:00' + created_at_ms * INTERVAL '1 millisecond'
        FROM analytics_events_earlier_layout
        ORDER BY id;
        DROP TABLE analytics_events_earlier_layout;
    END IF;
END
$$;

-- Ranges of time (every read route) and the timeline's order. Named for this
-- server, so as not to meet maicivy's own index names.
CREATE INDEX IF NOT EXISTS maicivy_analytics_events_created_at
    ON analytics_events (created_at, id);
-- One event type over a range: letters, heatmap, themes, pages.
CREATE INDEX IF NOT EXISTS maicivy_analytics_events_type_created_at
    ON analytics_events (event_type, created_at);

-- The secret of the cookieless visitor id, one per day; older ones are deleted so
-- that no id can be recomputed afterwards. Earlier deployments have it already.
CREATE TABLE IF NOT EXISTS visitor_salts (
    day  TEXT PRIMARY KEY,
    salt BYTEA NOT NULL
);
