//! Domain values: the types that cross every layer, each with a `parse` so that
//! invalid data is refused at the edge and cannot travel inward.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// The event types that the server itself sends on the WebSocket. An ingested event
/// may not use them, or a dashboard could not tell a real `heartbeat` from a forged one.
pub const RESERVED_EVENT_TYPES: [&str; 6] = [
    "initial_stats",
    "heartbeat",
    "pong",
    "error",
    "visitor_connected",
    "visitor_disconnected",
];

/// The event type that counts towards `letters_today`.
pub const LETTER_GENERATE: &str = "letter_generate";

/// A validated event type: 1–50 characters of `a-z 0-9 _ - . :`, not reserved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub const MAX_LEN: usize = 50;

    /// Checks the rules of CONTRACT.md; the error is a sentence for the client.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("event_type must not be empty.".into());
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!(
                "event_type is {} characters long; at most {} are allowed.",
                raw.chars().count(),
                Self::MAX_LEN
            ));
        }
        if let Some(bad) = raw.chars().find(|&c| !Self::is_name_char(c)) {
            return Err(format!(
                "event_type may only contain a-z, 0-9, '_', '-', '.' and ':' (found {bad:?})."
            ));
        }
        if RESERVED_EVENT_TYPES.contains(&raw) {
            return Err(format!(
                "event_type \"{raw}\" is reserved for messages the server sends."
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The shape of a type name, reserved or not: what subscriptions accept too
    /// (a client may filter on the server's own `visitor_connected`).
    pub fn is_name(raw: &str) -> bool {
        (1..=Self::MAX_LEN).contains(&raw.len()) && raw.chars().all(Self::is_name_char)
    }

    fn is_name_char(c: char) -> bool {
        matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.' | ':')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_letter(&self) -> bool {
        self.0 == LETTER_GENERATE
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A visitor id: always a UUID, whether sent by the client, read from the
/// `visitor_id` cookie, or derived cookielessly (see `visitor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VisitorId(Uuid);

impl VisitorId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        Uuid::parse_str(raw.trim()).map(Self).map_err(|_| {
            "visitor_id must be a UUID such as 3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34.".into()
        })
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for VisitorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl Serialize for VisitorId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An event accepted by the HTTP layer, not yet stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The row id (`analytics_events.id`, a UUID as in maicivy's schema), chosen
    /// before the insert so that the writer needs no `RETURNING`.
    pub id: Uuid,
    pub event_type: EventType,
    pub visitor_id: VisitorId,
    /// Always a JSON object (an absent `event_data` becomes `{}`).
    pub event_data: serde_json::Map<String, serde_json::Value>,
    pub page_url: Option<String>,
    /// The request's `Referer` header, stored as maicivy does.
    pub referrer: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// An event as the store gives it back.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub id: Uuid,
    pub visitor_id: String,
    pub event_type: String,
    pub event_data: serde_json::Value,
    pub page_url: Option<String>,
    pub referrer: Option<String>,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// The live figures, STATS in CONTRACT.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, Default)]
pub struct Stats {
    pub current_visitors: u64,
    pub unique_today: u64,
    pub total_events: u64,
    pub letters_today: u64,
    /// Unix seconds of the computation.
    pub timestamp: i64,
}

/// RFC 3339 with second precision and a `Z`, the shape of the seed's examples.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    // Sub-second digits, as Go's `time.Time` marshals them: maicivy's clients and
    // Go's own published events carry them, and an event's order within a second
    // stays visible.
    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn serialize_rfc3339<S: serde::Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_rules() {
        assert!(EventType::parse("page_view").is_ok());
        assert!(EventType::parse("shop.cart:add-1").is_ok());
        assert!(EventType::parse(&"a".repeat(50)).is_ok());
        assert!(EventType::parse(&"a".repeat(51)).is_err());
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("Page_View").is_err());
        assert!(EventType::parse("page view").is_err());
        assert!(EventType::parse("é").is_err());
        for reserved in RESERVED_EVENT_TYPES {
            assert!(EventType::parse(reserved).is_err(), "{reserved}");
        }
    }

    #[test]
    fn visitor_id_is_a_uuid() {
        let id = VisitorId::parse("3F1C6A2E-8B4D-4C1E-9A7F-2D5E8C0B1A34").unwrap();
        assert_eq!(id.to_string(), "3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34");
        assert!(VisitorId::parse("not-a-uuid").is_err());
    }
}
