//! The dashboard's reads of the last minutes: events per minute, who is on which
//! page now, who was seen since a time. Each raw, or from the minute and visitor-day
//! aggregates with the seconds before the first whole minute raw.

/// The live routes' queries, for `sql_store_impl!`.
macro_rules! live_reads_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            async fn raw_events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                use $crate::store::{count, minute_from_sql, time_to_sql};
                let rows: Vec<(String, i64)> = sqlx::query_as(concat!(
                    "SELECT ",
                    $d!(minute_text "created_at"),
                    ", COUNT(*) FROM analytics_events WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") AND created_at < CAST($2 AS ",
                    $d!(time),
                    ") GROUP BY 1 ORDER BY 1"
                ))
                .bind(time_to_sql(from))
                .bind(time_to_sql(to))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(minute, n)| {
                        Ok($crate::store::MinuteCount {
                            minute_ms: minute_from_sql(&minute)?.timestamp_millis(),
                            count: count(n),
                        })
                    })
                    .collect()
            }

            async fn agg_events_per_minute(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                to: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::MinuteCount>, $crate::store::StoreError> {
                use $crate::store::aggregates::{ceil_bucket, from_micros, micros};
                const MINUTE: i64 = 60_000_000;
                let first = ceil_bucket(micros(from), MINUTE);
                let end = micros(to).div_euclid(MINUTE);
                if first >= end {
                    return self.raw_events_per_minute(from, to).await;
                }
                let head_end = from_micros(first * MINUTE);
                let mut out = if from < head_end {
                    self.raw_events_per_minute(from, head_end).await?
                } else {
                    Vec::new()
                };
                let rows: Vec<(i64, i64)> = sqlx::query_as(
                    "SELECT minute, events FROM agg_minute WHERE minute >= $1 AND minute < $2 \
                     ORDER BY minute",
                )
                .bind(first)
                .bind(end)
                .fetch_all(&self.pool)
                .await?;
                out.extend(rows.into_iter().filter(|&(_, n)| n > 0).map(|(m, n)| {
                    $crate::store::MinuteCount {
                        minute_ms: m * 60_000,
                        count: $crate::store::count(n),
                    }
                }));
                let tail = from_micros(end * MINUTE);
                if tail < to {
                    out.extend(self.raw_events_per_minute(tail, to).await?);
                }
                Ok(out)
            }

            async fn raw_pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                use $crate::store::{count, time_to_sql};
                // `rn = 1`: each visitor's latest page_view in the window (by time,
                // then id, so that a tie still names one page), so a visitor who
                // moved on counts on the new page.
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(concat!(
                    "SELECT page_url, SUM(CASE WHEN rn = 1 THEN 1 ELSE 0 END) AS visitors, \
                     COUNT(*) AS views FROM (\
                       SELECT page_url, ROW_NUMBER() OVER (PARTITION BY visitor_id \
                         ORDER BY created_at DESC, id DESC) AS rn \
                       FROM analytics_events WHERE event_type = 'page_view' \
                       AND deleted_at IS NULL AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ")) v WHERE page_url IS NOT NULL GROUP BY page_url \
                     ORDER BY visitors DESC, views DESC, page_url",
                    $d!(binary_order),
                    " LIMIT $2"
                ))
                .bind(time_to_sql(from))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(page_url, visitors, views)| $crate::store::PageNow {
                        page_url,
                        visitors: count(visitors),
                        views: count(views),
                    })
                    .collect())
            }

            async fn agg_pages_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<$crate::store::PageNow>, $crate::store::StoreError> {
                use std::collections::HashMap;
                use $crate::store::aggregates::{ceil_bucket, from_micros, micros};
                use $crate::store::{count, time_to_sql};
                const MINUTE: i64 = 60_000_000;
                // Who is where: each visitor's latest page view in the window (their
                // rows of each day, an index range on `page_at`), counted per page in
                // SQL: one row per page comes back, not one per active visitor. A
                // row's `page_at` is in its day, so the window's rows are of the day
                // of `from` and later ones. While none is of a later day (a window
                // that does not cross midnight), each visitor is one row and a plain
                // GROUP BY counts them; otherwise each visitor's latest row is found
                // by ROW_NUMBER (sorting the window's rows by visitor, twice the
                // time). Rows of one visitor never tie on `page_at` (a time is in one
                // day), so the order needs no tie-break. The check is a probe of
                // the primary key (`day >`, an empty range but after midnight; a
                // later day's page view is in the window, as `from` is in `day`, and
                // a later row without one only sends the count the long way). The
                // unary `+` keeps the count on the `page_at` index (SQLite would take
                // `day =` and read the whole day); its `day =` is kept so that a row
                // of the next day written in between is not counted a second time.
                let day = $crate::store::aggregates::day_number($crate::period::local_day(
                    self.agg.tz,
                    from,
                ));
                let (later,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM agg_visitor_day \
                     WHERE day > $1 LIMIT 1) AS later",
                )
                .bind(day)
                .fetch_one(&self.pool)
                .await?;
                let here: Vec<(String, i64)> = if later == 0 {
                    sqlx::query_as(
                        "SELECT page_url, COUNT(*) FROM agg_visitor_day \
                         WHERE +day = $1 AND page_at IS NOT NULL AND page_at >= $2 \
                         AND page_url IS NOT NULL GROUP BY page_url",
                    )
                    .bind(day)
                    .bind(micros(from))
                    .fetch_all(&self.pool)
                    .await?
                } else {
                    sqlx::query_as(
                        "SELECT page_url, COUNT(*) FROM ( \
                           SELECT page_url, ROW_NUMBER() OVER ( \
                             PARTITION BY visitor_id ORDER BY page_at DESC) AS latest \
                           FROM agg_visitor_day WHERE page_at IS NOT NULL AND page_at >= $1 \
                         ) AS v WHERE latest = 1 AND page_url IS NOT NULL GROUP BY page_url",
                    )
                    .bind(micros(from))
                    .fetch_all(&self.pool)
                    .await?
                };
                let mut pages: HashMap<String, (u64, u64)> = HashMap::new();
                for (page, n) in here {
                    pages.entry(page).or_default().0 += count(n);
                }
                // Views: whole minutes from the aggregates, the seconds before the
                // first whole minute raw.
                let first = ceil_bucket(micros(from), MINUTE);
                let head_end = from_micros(first * MINUTE);
                if from < head_end {
                    let raw: Vec<(String, i64)> = sqlx::query_as(concat!(
                        "SELECT page_url, COUNT(*) FROM analytics_events \
                         WHERE event_type = 'page_view' AND deleted_at IS NULL \
                         AND page_url IS NOT NULL AND created_at >= CAST($1 AS ",
                        $d!(time),
                        ") AND created_at < CAST($2 AS ",
                        $d!(time),
                        ") GROUP BY page_url"
                    ))
                    .bind(time_to_sql(from))
                    .bind(time_to_sql(head_end))
                    .fetch_all(&self.pool)
                    .await?;
                    for (page, n) in raw {
                        pages.entry(page).or_default().1 += count(n);
                    }
                }
                let views: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT page_url, CAST(SUM(views) AS BIGINT) FROM agg_minute_page \
                     WHERE minute >= $1 GROUP BY page_url",
                )
                .bind(first)
                .fetch_all(&self.pool)
                .await?;
                for (page, n) in views {
                    pages.entry(page).or_default().1 += count(n);
                }
                let mut out: Vec<$crate::store::PageNow> = pages
                    .into_iter()
                    .filter(|(_, (_, views))| *views > 0)
                    .map(|(page_url, (visitors, views))| $crate::store::PageNow {
                        page_url,
                        visitors,
                        views,
                    })
                    .collect();
                out.sort_by(|a, b| {
                    b.visitors
                        .cmp(&a.visitors)
                        .then(b.views.cmp(&a.views))
                        .then(a.page_url.as_bytes().cmp(b.page_url.as_bytes()))
                });
                out.truncate(limit as usize);
                Ok(out)
            }

            async fn raw_visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                use $crate::store::{time_from_sql, time_to_sql, uuid_from_sql};
                let rows: Vec<(String, String)> = sqlx::query_as(concat!(
                    "SELECT CAST(visitor_id AS TEXT), ",
                    $d!(time_text "MAX(created_at)"),
                    " FROM analytics_events WHERE deleted_at IS NULL \
                     AND created_at >= CAST($1 AS ",
                    $d!(time),
                    ") GROUP BY visitor_id"
                ))
                .bind(time_to_sql(from))
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id, at)| {
                        Ok((
                            $crate::domain::VisitorId::from_uuid(uuid_from_sql(&id)?),
                            time_from_sql(&at)?,
                        ))
                    })
                    .collect()
            }

            async fn agg_visitors_since(
                &self,
                from: chrono::DateTime<chrono::Utc>,
            ) -> Result<
                Vec<($crate::domain::VisitorId, chrono::DateTime<chrono::Utc>)>,
                $crate::store::StoreError,
            > {
                use $crate::store::aggregates::{day_number, from_micros, micros};
                // A visitor last seen at or after `from` on a day that contains or
                // follows it was seen since `from`, and that is when. The primary key
                // is (day, visitor): while the rows are all of one day (the
                // restore's case, today), each visitor is one row, so there is no SQL
                // GROUP BY (a temporary B-tree over every row, three times the cost
                // of the scan); a visitor seen on several days is merged here.
                let day = day_number($crate::period::local_day(self.agg.tz, from));
                let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                    "SELECT day, visitor_id, last_seen FROM agg_visitor_day \
                     WHERE day >= $1 AND last_seen >= $2",
                )
                .bind(day)
                .bind(micros(from))
                .fetch_all(&self.pool)
                .await?;
                let one_day = rows.first().is_none_or(|first| rows.iter().all(|r| r.0 == first.0));
                let mut seen = Vec::with_capacity(rows.len());
                for (_, id, at) in &rows {
                    seen.push((
                        $crate::domain::VisitorId::from_uuid($crate::store::uuid_from_sql(id)?),
                        *at,
                    ));
                }
                if !one_day {
                    let mut latest = std::collections::HashMap::with_capacity(seen.len());
                    for (visitor, at) in seen.drain(..) {
                        let last = latest.entry(visitor).or_insert(at);
                        *last = (*last).max(at);
                    }
                    seen.extend(latest);
                }
                Ok(seen
                    .into_iter()
                    .map(|(visitor, at)| (visitor, from_micros(at)))
                    .collect())
            }
        }
    };
}
pub(crate) use live_reads_impl;
