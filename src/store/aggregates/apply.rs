//! What the writer and the fold add to the aggregate tables: a `Delta`, applied with
//! one multi-row upsert per table inside the caller's transaction. Apart from the
//! rest of the aggregates because these are its only writes, and they run in every
//! batch's transaction.

/// Adds `rows` (a map of key to counts) to `table`: one multi-row upsert per
/// shaped chunk, whose conflict on the key columns adds each count column to the
/// stored one. `bind` pushes one row's values, keys then counts, in the order the
/// columns are named.
macro_rules! add_rows {
    ($db:ty, $conn:ident, $rows:expr,
     $table:literal ($key0:ident $(, $key:ident)*; $sum0:ident $(, $sum:ident)*),
     |$b:ident, $row:pat_param| $bind:block) => {{
        let rows: Vec<_> = $rows.iter().collect();
        for chunk in $crate::store::shaped_chunks(&rows) {
            let mut q = sqlx::QueryBuilder::<$db>::new(concat!(
                "INSERT INTO ", $table, " (", stringify!($key0) $(, ", ", stringify!($key))*,
                ", ", stringify!($sum0) $(, ", ", stringify!($sum))*, ") "
            ));
            q.push_values(chunk, |mut $b, $row| $bind);
            q.push(concat!(
                " ON CONFLICT (", stringify!($key0) $(, ", ", stringify!($key))*, ") DO UPDATE SET ",
                stringify!($sum0), " = ", $table, ".", stringify!($sum0), " + excluded.", stringify!($sum0)
                $(, ", ", stringify!($sum), " = ", $table, ".", stringify!($sum), " + excluded.", stringify!($sum))*
            ));
            q.build().execute(&mut *$conn).await?;
        }
    }};
}
pub(crate) use add_rows;

/// The aggregates' writes, for `sql_store_impl!`.
macro_rules! apply_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            /// Adds what the inserted events of a batch count to the aggregates, in
            /// the batch's transaction.
            async fn count_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                events: &[$crate::domain::NewEvent],
                inserted: Option<Vec<String>>,
            ) -> Result<(), sqlx::Error> {
                use $crate::store::aggregates::{AggEvent, Delta, micros};
                use $crate::store::{MAX_URL_CHARS, truncate_chars};
                // `None`: every event of the batch was inserted.
                let only: Option<std::collections::HashSet<String>> = match inserted {
                    None => None,
                    Some(ids) if ids.is_empty() => return Ok(()),
                    Some(ids) if ids.len() == events.len() => None,
                    Some(ids) => Some(ids.into_iter().collect()),
                };
                if events.is_empty() {
                    return Ok(());
                }
                let mut delta = Delta::default();
                let mut latest = i64::MIN;
                for e in events {
                    let id = e.id.hyphenated().to_string();
                    if only.as_ref().is_some_and(|only| !only.contains(&id)) {
                        continue;
                    }
                    let visitor = e.visitor_id.to_string();
                    let at = micros(e.occurred_at);
                    latest = latest.max(at);
                    delta.add(
                        self.agg.tz,
                        &AggEvent {
                            id: &id,
                            visitor: &visitor,
                            event_type: e.event_type.as_str(),
                            data: Some(&e.event_data),
                            page_url: e.page_url.as_deref().map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            at,
                        },
                    );
                }
                self.apply_delta(conn, &delta).await?;
                let own = $d!(record_own_xact);
                if !own.is_empty() {
                    sqlx::query(own).bind(latest).execute(&mut *conn).await?;
                }
                Ok(())
            }

            /// `INSERT INTO agg_visitor_day … VALUES` for `chunk`, before its
            /// conflict clause: the first pass inserts the visitors new to a day,
            /// the second moves the others' times on.
            fn visitor_day_rows<'a>(
                chunk: &'a [(&'a (i64, String), &'a $crate::store::aggregates::VisitorDay)],
            ) -> sqlx::QueryBuilder<$db> {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO agg_visitor_day (day, visitor_id, last_seen, page_at, \
                     page_id, page_url) ",
                );
                q.push_values(chunk, |mut b, ((day, visitor), v)| {
                    b.push_bind(*day)
                        .push_bind(visitor.as_str())
                        .push_bind(v.last_seen)
                        .push_bind(v.page.as_ref().map(|p| p.0))
                        .push_bind(v.page.as_ref().map(|p| p.1.as_str()))
                        .push_bind(v.page.as_ref().and_then(|p| p.2.as_deref()));
                });
                q
            }

            /// Applies `delta` to the aggregate tables, inside the caller's
            /// transaction: one multi-row upsert per table, keys in sorted order.
            async fn apply_delta(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                delta: &$crate::store::aggregates::Delta,
            ) -> Result<(), sqlx::Error> {
                use std::collections::{BTreeMap, HashSet};
                use $crate::store::aggregates::{Sketch, visitor_hash};
                if delta.is_empty() {
                    return Ok(());
                }
                // Visitors new to a day first: they count in `agg_day.visitors` and
                // go into the day's sketch; the others only move their times on.
                let mut new_per_day: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
                let rows: Vec<_> = delta.visitors.iter().collect();
                let mut known = Vec::new();
                for chunk in $crate::store::shaped_chunks(&rows) {
                    let mut q = Self::visitor_day_rows(chunk);
                    q.push(" ON CONFLICT (day, visitor_id) DO NOTHING RETURNING day, visitor_id");
                    let new: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *conn).await?;
                    let new: HashSet<(i64, String)> = new.into_iter().collect();
                    for row in chunk {
                        if new.contains(row.0) {
                            new_per_day
                                .entry(row.0.0)
                                .or_default()
                                .push(visitor_hash(&row.0.1));
                        } else {
                            known.push(*row);
                        }
                    }
                }
                for chunk in $crate::store::shaped_chunks(&known) {
                    let mut q = Self::visitor_day_rows(chunk);
                    q.push(concat!(
                        " ON CONFLICT (day, visitor_id) DO UPDATE SET \
                         last_seen = CASE WHEN excluded.last_seen > agg_visitor_day.last_seen \
                           THEN excluded.last_seen ELSE agg_visitor_day.last_seen END, \
                         page_at = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_at ELSE agg_visitor_day.page_at END, \
                         page_id = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_id ELSE agg_visitor_day.page_id END, \
                         page_url = CASE WHEN ", $crate::store::aggregates::newer_page!($d),
                        " THEN excluded.page_url ELSE agg_visitor_day.page_url END \
                         WHERE excluded.last_seen > agg_visitor_day.last_seen OR ",
                        $crate::store::aggregates::newer_page!($d)
                    ));
                    q.build().execute(&mut *conn).await?;
                }

                $crate::store::aggregates::add_rows!($db, conn, delta.days, "agg_day" (day; events, letters, motivation, anti_motivation, visitors),
                    |b, (day, c)| {
                        let visitors = new_per_day.get(day).map_or(0, |v| v.len() as i64);
                        b.push_bind(**day)
                            .push_bind(c.events)
                            .push_bind(c.letters)
                            .push_bind(c.motivation)
                            .push_bind(c.anti_motivation)
                            .push_bind(visitors);
                    });
                $crate::store::aggregates::add_rows!($db, conn, delta.day_types, "agg_day_type" (day, event_type; events),
                    |b, ((day, kind), n)| {
                        b.push_bind(*day).push_bind(kind.as_str()).push_bind(**n);
                    });
                $crate::store::aggregates::add_rows!($db, conn, delta.minutes, "agg_minute" (minute; events),
                    |b, (minute, n)| {
                        b.push_bind(**minute).push_bind(**n);
                    });
                $crate::store::aggregates::add_rows!($db, conn, delta.minute_pages, "agg_minute_page" (minute, page_url; views),
                    |b, ((minute, page), n)| {
                        b.push_bind(*minute).push_bind(page.as_str()).push_bind(**n);
                    });
                $crate::store::aggregates::add_rows!($db, conn, delta.heat, "agg_heat" (level, bucket, page_url, x, y; clicks),
                    |b, ((level, bucket, page, x, y), n)| {
                        b.push_bind(*level)
                            .push_bind(*bucket)
                            .push_bind(page.as_str())
                            .push_bind(f64::from_bits(*x))
                            .push_bind(f64::from_bits(*y))
                            .push_bind(**n);
                    });
                $crate::store::aggregates::add_rows!($db, conn, delta.themes, "agg_theme" (theme; views),
                    |b, (theme, n)| {
                        b.push_bind(theme.as_str()).push_bind(**n);
                    });
                // The sketches last: the first batch of a day inserts it, later ones
                // merge into it (row locked on PostgreSQL).
                for (day, hashes) in &new_per_day {
                    let mut sketch = Sketch::new();
                    for &h in hashes {
                        sketch.insert_hash(h);
                    }
                    let created = sqlx::query(
                        "INSERT INTO agg_day_sketch (day, sketch) VALUES ($1, $2) \
                         ON CONFLICT (day) DO NOTHING",
                    )
                    .bind(*day)
                    .bind(sketch.to_bytes())
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                    if created == 1 {
                        continue;
                    }
                    let stored: Vec<u8> = sqlx::query_scalar(concat!(
                        "SELECT sketch FROM agg_day_sketch WHERE day = $1",
                        $d!(for_update)
                    ))
                    .bind(*day)
                    .fetch_one(&mut *conn)
                    .await?;
                    match Sketch::from_bytes(&stored) {
                        Some(old) => sketch.union(&old),
                        None => {
                            // Not a sketch (written by hand?): the day's exact visitor
                            // set rebuilds it.
                            tracing::warn!(day, "a stored sketch could not be read; rebuilt");
                            let all: Vec<String> = sqlx::query_scalar(
                                "SELECT visitor_id FROM agg_visitor_day WHERE day = $1",
                            )
                            .bind(*day)
                            .fetch_all(&mut *conn)
                            .await?;
                            for v in &all {
                                sketch.insert_hash(visitor_hash(v));
                            }
                        }
                    }
                    sqlx::query("UPDATE agg_day_sketch SET sketch = $2 WHERE day = $1")
                        .bind(*day)
                        .bind(sketch.to_bytes())
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            }

            /// Folds rows the writer did not count into the aggregates, in the
            /// caller's transaction (the backfill and maicivy's rows).
            async fn fold_rows(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[$crate::store::aggregates::FoldRow],
            ) -> Result<u64, sqlx::Error> {
                let (delta, n) = $crate::store::aggregates::delta_of_rows(self.agg.tz, rows)?;
                self.apply_delta(conn, &delta).await?;
                Ok(n)
            }
        }
    };
}
pub(crate) use apply_impl;
