//! The WebSocket protocol of CONTRACT.md and of the protocol extensions, typed once:
//! `ServerMessage` is everything the server sends, `ClientMessage` everything a client
//! may send.
//!
//! Both encodings of a server message come from the typed value: `to_json` gives the
//! exact bytes of CONTRACT.md (field order and all), `to_proto` the `ServerMessage` of
//! `proto/maicivy_analytics.proto`. Nothing outside this module (and `proto`) writes
//! the `"type"` of a message or serialises one (tests/tidy.rs checks it).
//!
//! A client frame is parsed once into a `ClientMessage` (`parse_text` for JSON text,
//! `parse_binary` for Protocol Buffers); refusals are sentences to send back.

mod client;
mod json;
mod protobuf;

use std::borrow::Cow;

use crate::domain::{NewEvent, Stats, VisitorId, rfc3339};
use crate::subscriptions::Filter;

pub use self::client::{NOT_AN_OBJECT, parse_binary, parse_text};
pub use self::json::{error, event, heartbeat, initial_stats, pong, presence, read_kind};
pub use self::protobuf::foreign_to_proto;

/// Whether a visitor entered or left the 5-minute window of `current_visitors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Connected,
    Disconnected,
}

/// An event as it is broadcast: `{"type":"<event_type>","visitor_id":…,"timestamp":"…Z",
/// "page_url":…,"data":{…}}`. Strings, because a foreign publisher's event (read back
/// from the shared Redis channel) need not carry ids this server would accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_type: String,
    pub visitor_id: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Always present in JSON (`""` when none), as Go publishes it.
    pub page_url: Option<String>,
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl From<&NewEvent> for Event {
    fn from(event: &NewEvent) -> Self {
        Self {
            event_type: event.event_type.as_str().to_owned(),
            visitor_id: event.visitor_id.to_string(),
            timestamp: rfc3339(event.occurred_at),
            page_url: Some(event.page_url.clone().unwrap_or_default()),
            data: event.event_data.clone(),
        }
    }
}

/// Every message the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// `{"type":"initial_stats","data":STATS}`
    InitialStats(Stats),
    /// `{"type":"heartbeat","data":STATS}`
    Heartbeat(Stats),
    /// An ingested event (see `Event`).
    Event(Event),
    /// `{"type":"visitor_connected"|"visitor_disconnected","visitor_id":…,"timestamp":…}`
    Presence {
        change: Presence,
        visitor_id: String,
        timestamp: i64,
    },
    /// `{"type":"pong","time":…}`
    Pong { time: i64 },
    /// `{"type":"error","error":"<sentence>"}`: the answer to a message the server
    /// cannot act on. It never closes the connection.
    Error { error: Cow<'static, str> },
    /// `{"type":"subscribed","events":[…]}` (with `"except":[…]` after `["*"]`).
    Subscribed {
        events: Vec<String>,
        except: Vec<String>,
    },
    /// `{"type":"resumed","epoch":…,"last_seq":N,"replayed":K}`
    Resumed {
        epoch: String,
        last_seq: u64,
        replayed: u64,
    },
    /// `{"type":"resume_failed","epoch":…,"last_seq":N,"error":"<sentence>"}`
    ResumeFailed {
        epoch: String,
        last_seq: u64,
        error: String,
    },
}

impl ServerMessage {
    pub fn event(event: &NewEvent) -> Self {
        Self::Event(Event::from(event))
    }

    pub fn presence(change: Presence, visitor_id: VisitorId, timestamp: i64) -> Self {
        Self::Presence {
            change,
            visitor_id: visitor_id.to_string(),
            timestamp,
        }
    }

    pub fn error(sentence: impl Into<Cow<'static, str>>) -> Self {
        Self::Error {
            error: sentence.into(),
        }
    }

    /// The confirmed subscription of `filter`.
    pub fn subscribed(filter: &Filter) -> Self {
        let (events, except) = filter.describe();
        let owned = |v: Vec<&str>| v.into_iter().map(str::to_owned).collect();
        Self::Subscribed {
            events: owned(events),
            except: owned(except),
        }
    }

    /// The `"type"` of the message.
    pub fn kind(&self) -> &str {
        match self {
            Self::InitialStats(_) => "initial_stats",
            Self::Heartbeat(_) => "heartbeat",
            Self::Event(e) => &e.event_type,
            Self::Presence {
                change: Presence::Connected,
                ..
            } => "visitor_connected",
            Self::Presence {
                change: Presence::Disconnected,
                ..
            } => "visitor_disconnected",
            Self::Pong { .. } => "pong",
            Self::Error { .. } => "error",
            Self::Subscribed { .. } => "subscribed",
            Self::Resumed { .. } => "resumed",
            Self::ResumeFailed { .. } => "resume_failed",
        }
    }
}

/// A `resume` request: `from` is the epoch and the last sequence number the client
/// received; `None` asks only for numbered events from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub from: Option<(String, u64)>,
}

/// Every message a client may send, the contract's and the extensions'.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientMessage {
    RefreshStats,
    /// `ping` or `heartbeat`, with the visitor to mark active if one is given.
    Ping {
        visitor_id: Option<VisitorId>,
    },
    Subscribe(Vec<Box<str>>),
    Unsubscribe(Vec<Box<str>>),
    Resume(Resume),
}

#[cfg(test)]
mod tests;
