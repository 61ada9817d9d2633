//! The writer's statements: a batch of events (and, where maicivy's `visitors` table
//! exists, its new visitors) in one transaction, and what happens to a connection
//! whose transaction failed. The hot path of ingestion, kept apart from the reads so
//! that a change to it is visible as one.

use chrono::{DateTime, Utc};

use crate::domain::{NewEvent, VisitorId};

/// maicivy's `VARCHAR(500)` columns refuse a longer value, and one refused value
/// would fail the whole batch; cut on a character boundary, as the column counts
/// characters.
pub(super) const MAX_URL_CHARS: usize = 500;

pub(super) fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

/// The longest multi-row statement the writer sends. Bind parameters are limited
/// per statement (SQLite: 32,766, PostgreSQL: 65,535); 512 rows of the widest table
/// (9 columns) stay far below.
const MAX_ROWS: usize = 512;

/// `rows` in slices whose lengths are powers of two (at most `MAX_ROWS`), largest
/// first. A multi-row INSERT is a new statement for every row count: cut at
/// arbitrary lengths, each batch would be parsed and planned afresh (the statement
/// caches hold a statement per SQL text); cut this way, a table has at most ten
/// shapes, prepared once per connection, for at most one statement per bit of the
/// row count.
pub(super) fn shaped_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = MAX_ROWS.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(len);
        rest = tail;
        Some(chunk)
    })
}

/// Statements each connection keeps prepared (sqlx's default is 100): the writer's
/// ten shapes of each of its ten multi-row statements, and the reads besides.
pub(super) const STATEMENT_CACHE: usize = 256;

/// The `visitors.session_id` of a visitor this server adds: a prefix that no
/// browser session of maicivy's can carry, so no cookie ever maps to it.
pub(super) fn session_id_for(visitor: VisitorId) -> String {
    format!("maicivy-analytics:{visitor}")
}

/// One `visitors` row per distinct visitor of a batch, with the times of their first
/// and last event. Sorted by id: concurrent writers (several instances) that insert
/// the same new visitors then take their row locks in one order and cannot deadlock.
pub(super) fn batch_visitors(
    events: &[NewEvent],
) -> Vec<(VisitorId, DateTime<Utc>, DateTime<Utc>)> {
    let mut seen: std::collections::BTreeMap<VisitorId, (DateTime<Utc>, DateTime<Utc>)> =
        std::collections::BTreeMap::new();
    for e in events {
        seen.entry(e.visitor_id)
            .and_modify(|(first, last)| {
                *first = (*first).min(e.occurred_at);
                *last = (*last).max(e.occurred_at);
            })
            .or_insert((e.occurred_at, e.occurred_at));
    }
    seen.into_iter()
        .map(|(id, (first, last))| (id, first, last))
        .collect()
}

/// The writer's queries, for `sql_store_impl!`.
macro_rules! writes_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            /// The statements of one batch, inside the caller's transaction.
            ///
            /// Without `returning`: `Ok(Inserted::All)` when every event was new, or
            /// `Ok(Inserted::Retry)` when some were stored already (the transaction
            /// must then be rolled back and the batch written again with
            /// `returning`, which answers `Inserted::Only` with the ids of the events
            /// it inserted). Asking SQL for the inserted ids of every batch costs a
            /// row sent back per event; a batch holding a stored event is rare (a
            /// retry after a COMMIT whose outcome was unknown).
            async fn write_batch(
                &self,
                conn: &mut <$db as sqlx::Database>::Connection,
                events: &[$crate::domain::NewEvent],
                returning: bool,
            ) -> Result<$crate::store::writes::Inserted, sqlx::Error> {
                use $crate::store::writes::Inserted;
                use $crate::store::{MAX_URL_CHARS, shaped_chunks, time_to_sql, truncate_chars};
                if self.tables.visitors {
                    // maicivy's `analytics_events.visitor_id` references `visitors`:
                    // a visitor it does not know gets a row first.
                    let visitors = $crate::store::batch_visitors(events);
                    for chunk in shaped_chunks(&visitors) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO visitors (id, session_id, visit_count, first_visit, \
                             last_visit, created_at, updated_at) ",
                        );
                        q.push_values(chunk, |mut row, (id, first, last)| {
                            row.push("CAST(")
                                .push_bind_unseparated(id.to_string())
                                .push_unseparated(concat!(" AS ", $d!(uuid), ")"))
                                .push_bind($crate::store::session_id_for(*id))
                                .push("1");
                            for at in [first, last, first, last] {
                                row.push("CAST(")
                                    .push_bind_unseparated(time_to_sql(*at))
                                    .push_unseparated(concat!(" AS ", $d!(time), ")"));
                            }
                        });
                        q.push(" ON CONFLICT DO NOTHING");
                        q.build().execute(&mut *conn).await?;
                    }
                }
                let mut inserted = Vec::new();
                for chunk in shaped_chunks(events) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO analytics_events (id, visitor_id, event_type, event_data, \
                         page_url, referrer, session_duration, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, e| {
                        for id in [e.id, e.visitor_id.as_uuid()] {
                            row.push("CAST(")
                                .push_bind_unseparated(id.hyphenated().to_string())
                                .push_unseparated(concat!(" AS ", $d!(uuid), ")"));
                        }
                        row.push_bind(e.event_type.as_str())
                            .push_bind(sqlx::types::Json(&e.event_data))
                            .push_bind(
                                e.page_url
                                    .as_deref()
                                    .map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            )
                            .push_bind(
                                e.referrer
                                    .as_deref()
                                    .map(|s| truncate_chars(s, MAX_URL_CHARS)),
                            )
                            .push("0");
                        for _ in 0..2 {
                            row.push("CAST(")
                                .push_bind_unseparated(time_to_sql(e.occurred_at))
                                .push_unseparated(concat!(" AS ", $d!(time), ")"));
                        }
                    });
                    // Idempotent per event id: when a COMMIT's outcome is unknown (the
                    // connection broke during it) and the caller stores the same events
                    // again, those already there are neither an error nor a duplicate,
                    // and are not counted again (RETURNING names the inserted ones).
                    q.push(" ON CONFLICT (id) DO NOTHING");
                    if returning {
                        q.push(" RETURNING CAST(id AS TEXT)");
                        let ids: Vec<String> = q.build_query_scalar().fetch_all(&mut *conn).await?;
                        inserted.extend(ids);
                    } else {
                        let stored = q.build().execute(&mut *conn).await?.rows_affected();
                        if stored != chunk.len() as u64 {
                            return Ok(Inserted::Retry);
                        }
                    }
                }
                Ok(if returning {
                    Inserted::Only(inserted)
                } else {
                    Inserted::All
                })
            }

            /// `EventStore::insert_batch`: the batch's statements in one transaction.
            async fn commit_batch(
                &self,
                events: &[$crate::domain::NewEvent],
            ) -> Result<(), $crate::store::StoreError> {
                if events.is_empty() {
                    return Ok(());
                }
                if self.commit_batch_once(events, false).await? {
                    return Ok(());
                }
                // Some of these events were stored already: written again, naming
                // the ones inserted so that only those are counted.
                self.commit_batch_once(events, true).await?;
                Ok(())
            }

            /// One transaction of `commit_batch`; `Ok(false)`: rolled back, because
            /// some events were stored already and `returning` was not asked.
            async fn commit_batch_once(
                &self,
                events: &[$crate::domain::NewEvent],
                returning: bool,
            ) -> Result<bool, $crate::store::StoreError> {
                use sqlx::Connection as _;
                use $crate::store::writes::Inserted;
                let mut conn = self.pool.acquire().await?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let written = match self.write_batch(&mut tx, events, returning).await {
                    Ok(Inserted::All) => {
                        self.count_batch(&mut tx, events, None).await.map(|()| true)
                    }
                    Ok(Inserted::Only(ids)) => self
                        .count_batch(&mut tx, events, Some(ids))
                        .await
                        .map(|()| true),
                    Ok(Inserted::Retry) => Ok(false),
                    Err(e) => Err(e),
                };
                let done = matches!(written, Ok(true));
                // `clean`: whether the connection is known to be outside any
                // transaction now. A connection that goes back to the pool inside an
                // open transaction (a COMMIT or ROLLBACK that failed, or sqlx's
                // transaction depth out of step with the server's) turns every later
                // batch into a savepoint of a transaction that never commits: they
                // would be acknowledged and then lost. Such a connection is closed
                // instead; the pool opens a fresh one.
                let (result, clean) = match written {
                    Ok(false) => match tx.rollback().await {
                        Ok(()) => (Ok(()), true),
                        Err(e) => (Err(e), false),
                    },
                    Ok(true) => match tx.commit().await {
                        Ok(()) => (Ok(()), true),
                        // A failed COMMIT may leave the transaction open (SQLite keeps
                        // it after a deferred constraint fails) or not (PostgreSQL
                        // ends it); the connection cannot tell us which.
                        Err(e) => (Err(e), false),
                    },
                    Err(e) => {
                        let rolled_back = tx.rollback().await.is_ok();
                        (Err(e), rolled_back)
                    }
                };
                if let Err(e) = result {
                    if !(clean && !conn.is_in_transaction()) {
                        if self.discard_failed_connections {
                            tracing::warn!(
                                "closing a database connection whose transaction failed"
                            );
                            // Dropping the detached connection closes it at once: a
                            // graceful close could wait on a broken server.
                            drop(conn.detach());
                        } else {
                            tracing::error!(
                                "a transaction failed on the only connection of an in-memory \
                                 database, which cannot be closed without losing the data"
                            );
                        }
                    }
                    return Err(e.into());
                }
                Ok(done)
            }
        }
    };
}
pub(crate) use writes_impl;

/// What `write_batch` inserted.
pub(crate) enum Inserted {
    /// Every event of the batch.
    All,
    /// These ids only (the others were stored already).
    Only(Vec<String>),
    /// Some events were stored already and their ids were not asked for: roll back
    /// and write again with `returning`.
    Retry,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn rows_are_cut_in_powers_of_two_largest_first() {
        let lengths = |n: usize| {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = shaped_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "every row once, in order");
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>()
        };
        assert_eq!(lengths(0), Vec::<usize>::new());
        assert_eq!(lengths(1), [1]);
        assert_eq!(lengths(200), [128, 64, 8]);
        assert_eq!(lengths(512), [512]);
        assert_eq!(lengths(1500), [512, 512, 256, 128, 64, 16, 8, 4]);
        let shapes: std::collections::BTreeSet<usize> = (1..=4096).flat_map(lengths).collect();
        assert_eq!(shapes.len(), 10, "1, 2, 4, … 512: {shapes:?}");
    }

    #[test]
    fn urls_are_cut_on_a_character_boundary() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abcdef", 3), "abc");
        let long = "é".repeat(600);
        let cut = truncate_chars(&long, MAX_URL_CHARS);
        assert_eq!(cut.chars().count(), 500);
        assert_eq!(cut.len(), 1000);
    }

    #[test]
    fn batch_visitors_are_distinct_sorted_and_span_their_events() {
        let t = |s| Utc.with_ymd_and_hms(2025, 12, 8, 12, 0, s).unwrap();
        let a = VisitorId::from_uuid(uuid::Uuid::from_u128(2));
        let b = VisitorId::from_uuid(uuid::Uuid::from_u128(1));
        let e = |who, at| NewEvent {
            id: uuid::Uuid::new_v4(),
            event_type: crate::domain::EventType::parse("page_view").unwrap(),
            visitor_id: who,
            event_data: Default::default(),
            page_url: None,
            referrer: None,
            occurred_at: at,
        };
        let rows = batch_visitors(&[e(a, t(5)), e(b, t(3)), e(a, t(1)), e(a, t(9))]);
        assert_eq!(rows, vec![(b, t(3), t(3)), (a, t(1), t(9))]);
        assert_eq!(
            session_id_for(a),
            "maicivy-analytics:00000000-0000-0000-0000-000000000002"
        );
    }
}
