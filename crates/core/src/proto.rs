//! The binary protocol: the messages of `proto/maicivy_analytics.proto` as Rust types.
//!
//! The types are written by hand with `prost`'s derive (there is no `protoc` to generate
//! them at build time); `tests/extensions.rs` decodes what the server sends with the
//! published `.proto` itself, so the two cannot drift unnoticed.
//!
//! The server's messages are built from their JSON encoding: the JSON is the record
//! (it is what the broker carries, byte for byte), and the protobuf frame is one more
//! encoding of it, built once per broadcast by `Envelope::proto`.

use bytes::Bytes;
use prost::Message as _;
use serde::Deserialize;

use crate::domain::Stats as StatsFigures;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ServerMessage {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(uint64, optional, tag = "2")]
    pub seq: Option<u64>,
    #[prost(oneof = "server_message::Body", tags = "3, 4, 5, 6, 7, 8, 9, 10, 15")]
    pub body: Option<server_message::Body>,
}

pub mod server_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "3")]
        Stats(super::Stats),
        #[prost(message, tag = "4")]
        Event(super::Event),
        #[prost(message, tag = "5")]
        Presence(super::Presence),
        #[prost(message, tag = "6")]
        Pong(super::Pong),
        #[prost(message, tag = "7")]
        Error(super::Error),
        #[prost(message, tag = "8")]
        Subscribed(super::Subscribed),
        #[prost(message, tag = "9")]
        Resumed(super::Resumed),
        #[prost(message, tag = "10")]
        ResumeFailed(super::ResumeFailed),
        #[prost(string, tag = "15")]
        Json(String),
    }
}

#[derive(Clone, Copy, PartialEq, prost::Message, Deserialize)]
pub struct Stats {
    #[prost(uint64, tag = "1")]
    pub current_visitors: u64,
    #[prost(uint64, tag = "2")]
    pub unique_today: u64,
    #[prost(uint64, tag = "3")]
    pub total_events: u64,
    #[prost(uint64, tag = "4")]
    pub letters_today: u64,
    #[prost(int64, tag = "5")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(string, tag = "1")]
    pub visitor_id: String,
    #[prost(string, tag = "2")]
    pub timestamp: String,
    #[prost(string, optional, tag = "3")]
    pub page_url: Option<String>,
    #[prost(string, tag = "4")]
    pub data_json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Presence {
    #[prost(string, tag = "1")]
    pub visitor_id: String,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Pong {
    #[prost(int64, tag = "1")]
    pub time: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    #[prost(string, tag = "1")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribed {
    #[prost(string, repeated, tag = "1")]
    pub events: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub except: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resumed {
    #[prost(string, tag = "1")]
    pub epoch: String,
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
    #[prost(uint64, tag = "3")]
    pub replayed: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResumeFailed {
    #[prost(string, tag = "1")]
    pub epoch: String,
    #[prost(uint64, tag = "2")]
    pub last_seq: u64,
    #[prost(string, tag = "3")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientMessage {
    #[prost(oneof = "client_message::Body", tags = "1, 2, 3, 4, 5")]
    pub body: Option<client_message::Body>,
}

pub mod client_message {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        RefreshStats(super::RefreshStats),
        #[prost(message, tag = "2")]
        Ping(super::Ping),
        #[prost(message, tag = "3")]
        Subscribe(super::EventTypes),
        #[prost(message, tag = "4")]
        Unsubscribe(super::EventTypes),
        #[prost(message, tag = "5")]
        Resume(super::Resume),
    }
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct RefreshStats {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(string, optional, tag = "1")]
    pub visitor_id: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EventTypes {
    #[prost(string, repeated, tag = "1")]
    pub events: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Resume {
    #[prost(string, optional, tag = "1")]
    pub epoch: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub last_seq: Option<u64>,
}

impl From<StatsFigures> for Stats {
    fn from(s: StatsFigures) -> Self {
        Self {
            current_visitors: s.current_visitors,
            unique_today: s.unique_today,
            total_events: s.total_events,
            letters_today: s.letters_today,
            timestamp: s.timestamp,
        }
    }
}

/// The protobuf frame of a server message given as its JSON encoding (`kind` is its
/// `"type"`, already read). A payload of no known shape travels as its JSON text, so
/// nothing a JSON client would get is lost for a protobuf client.
pub fn from_json(json: &[u8], kind: &str, seq: Option<u64>) -> Bytes {
    let body = body_of(json, kind)
        .unwrap_or_else(|| server_message::Body::Json(String::from_utf8_lossy(json).into_owned()));
    Bytes::from(
        ServerMessage {
            kind: kind.to_owned(),
            seq,
            body: Some(body),
        }
        .encode_to_vec(),
    )
}

fn body_of(json: &[u8], kind: &str) -> Option<server_message::Body> {
    use server_message::Body;
    match kind {
        "initial_stats" | "heartbeat" => {
            #[derive(Deserialize)]
            struct M {
                data: Stats,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Stats(m.data))
        }
        "visitor_connected" | "visitor_disconnected" => {
            #[derive(Deserialize)]
            struct M {
                visitor_id: String,
                timestamp: i64,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Presence(Presence {
                visitor_id: m.visitor_id,
                timestamp: m.timestamp,
            }))
        }
        "pong" => {
            #[derive(Deserialize)]
            struct M {
                time: i64,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Pong(Pong { time: m.time }))
        }
        "error" => {
            #[derive(Deserialize)]
            struct M {
                error: String,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Error(Error { error: m.error }))
        }
        "subscribed" => {
            #[derive(Deserialize)]
            struct M {
                events: Vec<String>,
                #[serde(default)]
                except: Vec<String>,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Subscribed(Subscribed {
                events: m.events,
                except: m.except,
            }))
        }
        "resumed" => {
            #[derive(Deserialize)]
            struct M {
                epoch: String,
                last_seq: u64,
                replayed: u64,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::Resumed(Resumed {
                epoch: m.epoch,
                last_seq: m.last_seq,
                replayed: m.replayed,
            }))
        }
        "resume_failed" => {
            #[derive(Deserialize)]
            struct M {
                epoch: String,
                last_seq: u64,
                error: String,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            Some(Body::ResumeFailed(ResumeFailed {
                epoch: m.epoch,
                last_seq: m.last_seq,
                error: m.error,
            }))
        }
        _ => {
            // An event: `{"type","visitor_id","timestamp":"…","page_url"?,"data"?}`.
            #[derive(Deserialize)]
            struct M {
                visitor_id: String,
                timestamp: String,
                #[serde(default)]
                page_url: Option<String>,
                #[serde(default)]
                data: Option<serde_json::Map<String, serde_json::Value>>,
            }
            let m: M = serde_json::from_slice(json).ok()?;
            let data = m.data.unwrap_or_default();
            Some(Body::Event(Event {
                visitor_id: m.visitor_id,
                timestamp: m.timestamp,
                page_url: m.page_url,
                data_json: serde_json::to_string(&data).ok()?,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use server_message::Body;

    fn decode(b: &Bytes) -> ServerMessage {
        ServerMessage::decode(&b[..]).unwrap()
    }

    #[test]
    fn events_figures_and_replies_take_their_shapes() {
        let ev = decode(&from_json(
            br#"{"type":"letter_generate","visitor_id":"v","timestamp":"2025-12-08T12:34:56Z","page_url":"/l","data":{"a":1}}"#,
            "letter_generate",
            Some(9),
        ));
        assert_eq!(ev.kind, "letter_generate");
        assert_eq!(ev.seq, Some(9));
        assert_eq!(
            ev.body,
            Some(Body::Event(Event {
                visitor_id: "v".into(),
                timestamp: "2025-12-08T12:34:56Z".into(),
                page_url: Some("/l".into()),
                data_json: r#"{"a":1}"#.into(),
            }))
        );
        let hb = decode(&from_json(
            br#"{"type":"heartbeat","data":{"current_visitors":1,"unique_today":2,"total_events":3,"letters_today":4,"timestamp":5}}"#,
            "heartbeat",
            None,
        ));
        assert_eq!(hb.seq, None);
        assert_eq!(
            hb.body,
            Some(Body::Stats(Stats {
                current_visitors: 1,
                unique_today: 2,
                total_events: 3,
                letters_today: 4,
                timestamp: 5
            }))
        );
        let odd = decode(&from_json(br#"{"type":"x","foo":1}"#, "x", Some(1)));
        assert_eq!(odd.body, Some(Body::Json(r#"{"type":"x","foo":1}"#.into())));
    }

    #[test]
    fn client_messages_round_trip() {
        let m = ClientMessage {
            body: Some(client_message::Body::Subscribe(EventTypes {
                events: vec!["page_view".into()],
            })),
        };
        assert_eq!(ClientMessage::decode(&m.encode_to_vec()[..]).unwrap(), m);
    }
}
