//! The WebSocket protocol of CONTRACT.md: what the server sends (encoded once into
//! `Bytes`, shared by every connection) and what it accepts from clients.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{NewEvent, Stats, VisitorId, rfc3339};

#[derive(Serialize)]
struct StatsMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a Stats,
}

/// Encodes a protocol message once. (Also used by `extensions` for its replies.)
pub fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    Bytes::from(serde_json::to_vec(value).expect("serialising a protocol message"))
}

/// `{"type":"initial_stats","data":STATS}`
pub fn initial_stats(stats: &Stats) -> Bytes {
    to_bytes(&StatsMessage {
        kind: "initial_stats",
        data: stats,
    })
}

/// `{"type":"heartbeat","data":STATS}`
pub fn heartbeat(stats: &Stats) -> Bytes {
    to_bytes(&StatsMessage {
        kind: "heartbeat",
        data: stats,
    })
}

/// `{"type":"<event_type>","visitor_id":…,"timestamp":"…Z","page_url":…,"data":{…}}`
pub fn event(event: &NewEvent) -> Bytes {
    #[derive(Serialize)]
    struct EventMessage<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        visitor_id: VisitorId,
        timestamp: String,
        // Always present (`""` when none), as Go publishes it.
        page_url: &'a str,
        data: &'a serde_json::Map<String, serde_json::Value>,
    }
    to_bytes(&EventMessage {
        kind: event.event_type.as_str(),
        visitor_id: event.visitor_id,
        timestamp: rfc3339(event.occurred_at),
        page_url: event.page_url.as_deref().unwrap_or(""),
        data: &event.event_data,
    })
}

/// Whether a visitor entered or left the 5-minute window of `current_visitors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Connected,
    Disconnected,
}

/// `{"type":"visitor_connected"|"visitor_disconnected","visitor_id":…,"timestamp":…}`
pub fn presence(change: Presence, visitor_id: VisitorId, timestamp: i64) -> Bytes {
    #[derive(Serialize)]
    struct PresenceMessage {
        #[serde(rename = "type")]
        kind: &'static str,
        visitor_id: VisitorId,
        timestamp: i64,
    }
    to_bytes(&PresenceMessage {
        kind: match change {
            Presence::Connected => "visitor_connected",
            Presence::Disconnected => "visitor_disconnected",
        },
        visitor_id,
        timestamp,
    })
}

/// `{"type":"pong","time":…}`
pub fn pong(time: i64) -> Bytes {
    #[derive(Serialize)]
    struct Pong {
        #[serde(rename = "type")]
        kind: &'static str,
        time: i64,
    }
    to_bytes(&Pong { kind: "pong", time })
}

/// `{"type":"error","error":"<sentence>"}`: the answer to a message the server
/// cannot act on. It never closes the connection.
pub fn error(sentence: &str) -> Bytes {
    #[derive(Serialize)]
    struct ErrorMessage<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        error: &'a str,
    }
    to_bytes(&ErrorMessage {
        kind: "error",
        error: sentence,
    })
}

/// The answer to a client message that is not a JSON object.
pub const NOT_AN_OBJECT: &str = "messages must be JSON objects such as {\"type\":\"ping\"}.";

/// A message a client may send.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    RefreshStats,
    /// `ping` or `heartbeat`, with the visitor to mark active if one is given.
    Ping {
        visitor_id: Option<VisitorId>,
    },
}

/// Parses one client text frame. The error is a sentence to send back.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        visitor_id: Option<serde_json::Value>,
    }
    // serde's derived structs also accept arrays (`["ping"]`): only objects are messages.
    if !text.trim_start().starts_with('{') {
        return Err(NOT_AN_OBJECT.to_owned());
    }
    let raw: Raw = serde_json::from_str(text).map_err(|_| NOT_AN_OBJECT.to_owned())?;
    let kind = raw
        .kind
        .ok_or_else(|| "the message has no \"type\" field.".to_owned())?;
    match kind.as_ref() {
        "refresh_stats" => Ok(ClientMessage::RefreshStats),
        "ping" | "heartbeat" => {
            // An invalid id is ignored and the ping still answered, as maicivy does:
            // a client's bad id must not cost it its pong (its keep-alive).
            let visitor_id = match raw.visitor_id {
                Some(serde_json::Value::String(s)) => VisitorId::parse(&s).ok(),
                _ => None,
            };
            Ok(ClientMessage::Ping { visitor_id })
        }
        other => Err(format!(
            "unknown message type {:?}; expected refresh_stats, ping or heartbeat.",
            truncate(other, 60)
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_client_message(r#"{"type":"refresh_stats"}"#),
            Ok(ClientMessage::RefreshStats)
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
        let id = "3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34";
        assert_eq!(
            parse_client_message(&format!(r#"{{"type":"heartbeat","visitor_id":"{id}"}}"#)),
            Ok(ClientMessage::Ping {
                visitor_id: Some(VisitorId::parse(id).unwrap())
            })
        );
        assert!(parse_client_message("nope").is_err());
        assert!(parse_client_message("[]").is_err());
        assert!(parse_client_message(r#"["refresh_stats"]"#).is_err());
        assert!(parse_client_message(r#"{"type":3}"#).is_err());
        assert!(parse_client_message(r#"{"type":"subscribe"}"#).is_err());
        assert_eq!(
            parse_client_message(r#"{"type":"ping","visitor_id":"x"}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"heartbeat","visitor_id":7}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
    }

    #[test]
    fn stats_shape() {
        let s = Stats {
            current_visitors: 12,
            unique_today: 145,
            total_events: 2340,
            letters_today: 23,
            timestamp: 1733683200,
        };
        assert_eq!(
            &initial_stats(&s)[..],
            br#"{"type":"initial_stats","data":{"current_visitors":12,"unique_today":145,"total_events":2340,"letters_today":23,"timestamp":1733683200}}"#
        );
    }
}
