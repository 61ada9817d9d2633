//! The timeline: its query and its cursor. Apart from the counting reads because it
//! is the one read that returns events themselves, paged by an index range rather than
//! folded into the aggregates.

use chrono::{DateTime, Utc};

use crate::domain::StoredEvent;

/// Where a timeline page ended: its last event's time and id. Opaque to clients
/// (`meta.next`, then `before=`): `<Unix microseconds>.<id in hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineCursor {
    pub at: DateTime<Utc>,
    pub id: uuid::Uuid,
}

impl TimelineCursor {
    pub fn after(event: &StoredEvent) -> Self {
        Self {
            at: event.created_at,
            id: event.id,
        }
    }

    pub fn encode(&self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.id.simple())
    }

    /// `None` for anything `encode` did not make.
    pub fn parse(raw: &str) -> Option<Self> {
        let (at, id) = raw.trim().split_once('.')?;
        if id.len() != 32 {
            return None;
        }
        Some(Self {
            at: DateTime::from_timestamp_micros(at.parse().ok()?)?,
            id: uuid::Uuid::try_parse(id).ok()?,
        })
    }
}

/// The timeline's query, for `sql_store_impl!`.
macro_rules! timeline_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            async fn raw_timeline(
                &self,
                limit: u32,
                offset: u64,
                before: Option<$crate::store::TimelineCursor>,
            ) -> Result<Vec<$crate::domain::StoredEvent>, $crate::store::StoreError> {
                use $crate::store::{time_from_sql, uuid_from_sql};
                type Row = (
                    String,
                    String,
                    String,
                    Option<sqlx::types::Json<serde_json::Value>>,
                    Option<String>,
                    Option<String>,
                    String,
                );
                // The cursor is the last event of the previous page: the page after
                // it is an index range, whatever its depth.
                let rows: Vec<Row> = match before {
                    None => sqlx::query_as(concat!(
                        "SELECT CAST(id AS TEXT), CAST(visitor_id AS TEXT), event_type, event_data, \
                         page_url, referrer, ",
                        $d!(time_text "created_at"),
                        " FROM analytics_events WHERE deleted_at IS NULL \
                         ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                    ))
                    .bind(i64::from(limit))
                    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?,
                    Some(cursor) => sqlx::query_as(concat!(
                        "SELECT CAST(id AS TEXT), CAST(visitor_id AS TEXT), event_type, event_data, \
                         page_url, referrer, ",
                        $d!(time_text "created_at"),
                        " FROM analytics_events WHERE deleted_at IS NULL \
                         AND (created_at, id) < (CAST($3 AS ",
                        $d!(time),
                        "), CAST($4 AS ",
                        $d!(uuid),
                        ")) ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
                    ))
                    .bind(i64::from(limit))
                    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                    .bind($crate::store::time_to_sql(cursor.at))
                    .bind(cursor.id.hyphenated().to_string())
                    .fetch_all(&self.pool)
                    .await?,
                };
                let mut events = Vec::with_capacity(rows.len());
                for (id, visitor_id, event_type, data, page_url, referrer, at) in rows {
                    events.push($crate::domain::StoredEvent {
                        id: uuid_from_sql(&id)?,
                        visitor_id,
                        event_type,
                        // maicivy's column is nullable; an event without data reads
                        // as the empty object an ingested one gets.
                        event_data: match data {
                            None | Some(sqlx::types::Json(serde_json::Value::Null)) => {
                                serde_json::Value::Object(Default::default())
                            }
                            Some(sqlx::types::Json(v)) => v,
                        },
                        page_url,
                        referrer,
                        created_at: time_from_sql(&at)?,
                    });
                }
                Ok(events)
            }
        }
    };
}
pub(crate) use timeline_impl;
