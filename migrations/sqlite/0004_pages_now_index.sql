-- Who is on which page now (`/pages-now`) counts the visitors whose latest page view
-- is in the window: an index range on `page_at`. With the day and the page in the
-- index too, the count reads the index alone, not a table row per visitor (at
-- 100,000 visitors a day, a 60-minute window holds tens of thousands of them).
CREATE INDEX agg_visitor_day_page ON agg_visitor_day (page_at, day, page_url)
    WHERE page_at IS NOT NULL;
DROP INDEX agg_visitor_day_page_at;
