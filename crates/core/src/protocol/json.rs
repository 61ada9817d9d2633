//! The JSON of every server message: `ServerMessage::to_json` (the exact bytes of
//! CONTRACT.md), `ServerMessage::from_json` (a foreign publisher's payload read
//! back), the encoded shorthands (`heartbeat`, `pong`, …) and `read_kind`.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Event, Presence, ServerMessage};
use crate::domain::{NewEvent, Stats, VisitorId};

/// Serialises a message body; these plain structs cannot fail (no maps with
/// non-string keys).
fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("serialising a protocol message"))
}

impl ServerMessage {
    /// The JSON of CONTRACT.md (and of the README's protocol extensions).
    pub fn to_json(&self) -> Bytes {
        let kind = self.kind();
        match self {
            Self::InitialStats(data) | Self::Heartbeat(data) => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    data: &'a Stats,
                }
                encode(&M { kind, data })
            }
            Self::Event(e) => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    visitor_id: &'a str,
                    timestamp: &'a str,
                    page_url: &'a str,
                    data: &'a serde_json::Map<String, serde_json::Value>,
                }
                encode(&M {
                    kind,
                    visitor_id: &e.visitor_id,
                    timestamp: &e.timestamp,
                    page_url: e.page_url.as_deref().unwrap_or(""),
                    data: &e.data,
                })
            }
            Self::Presence {
                visitor_id,
                timestamp,
                ..
            } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    visitor_id: &'a str,
                    timestamp: i64,
                }
                encode(&M {
                    kind,
                    visitor_id,
                    timestamp: *timestamp,
                })
            }
            Self::Pong { time } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    time: i64,
                }
                encode(&M { kind, time: *time })
            }
            Self::Error { error } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    error: &'a str,
                }
                encode(&M { kind, error })
            }
            Self::Subscribed { events, except } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    events: &'a [String],
                    #[serde(skip_serializing_if = "<[String]>::is_empty")]
                    except: &'a [String],
                }
                encode(&M {
                    kind,
                    events,
                    except,
                })
            }
            Self::Resumed {
                epoch,
                last_seq,
                replayed,
            } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    epoch: &'a str,
                    last_seq: u64,
                    replayed: u64,
                }
                encode(&M {
                    kind,
                    epoch,
                    last_seq: *last_seq,
                    replayed: *replayed,
                })
            }
            Self::ResumeFailed {
                epoch,
                last_seq,
                error,
            } => {
                #[derive(Serialize)]
                struct M<'a> {
                    #[serde(rename = "type")]
                    kind: &'a str,
                    epoch: &'a str,
                    last_seq: u64,
                    error: &'a str,
                }
                encode(&M {
                    kind,
                    epoch,
                    last_seq: *last_seq,
                    error,
                })
            }
        }
    }

    /// Reads a payload another publisher put on the shared channel, whose `"type"` is
    /// `kind` (already read). `None` when it has no known shape.
    pub fn from_json(json: &[u8], kind: &str) -> Option<Self> {
        Some(match kind {
            "initial_stats" | "heartbeat" => {
                #[derive(Deserialize)]
                struct M {
                    data: Stats,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                if kind == "heartbeat" {
                    Self::Heartbeat(m.data)
                } else {
                    Self::InitialStats(m.data)
                }
            }
            "visitor_connected" | "visitor_disconnected" => {
                #[derive(Deserialize)]
                struct M {
                    visitor_id: String,
                    timestamp: i64,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::Presence {
                    change: if kind == "visitor_connected" {
                        Presence::Connected
                    } else {
                        Presence::Disconnected
                    },
                    visitor_id: m.visitor_id,
                    timestamp: m.timestamp,
                }
            }
            "pong" => {
                #[derive(Deserialize)]
                struct M {
                    time: i64,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::Pong { time: m.time }
            }
            "error" => {
                #[derive(Deserialize)]
                struct M {
                    error: String,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::error(m.error)
            }
            "subscribed" => {
                #[derive(Deserialize)]
                struct M {
                    events: Vec<String>,
                    #[serde(default)]
                    except: Vec<String>,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::Subscribed {
                    events: m.events,
                    except: m.except,
                }
            }
            "resumed" => {
                #[derive(Deserialize)]
                struct M {
                    epoch: String,
                    last_seq: u64,
                    replayed: u64,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::Resumed {
                    epoch: m.epoch,
                    last_seq: m.last_seq,
                    replayed: m.replayed,
                }
            }
            "resume_failed" => {
                #[derive(Deserialize)]
                struct M {
                    epoch: String,
                    last_seq: u64,
                    error: String,
                }
                let m: M = serde_json::from_slice(json).ok()?;
                Self::ResumeFailed {
                    epoch: m.epoch,
                    last_seq: m.last_seq,
                    error: m.error,
                }
            }
            _ => {
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
                Self::Event(Event {
                    event_type: kind.to_owned(),
                    visitor_id: m.visitor_id,
                    timestamp: m.timestamp,
                    page_url: m.page_url,
                    data: m.data.unwrap_or_default(),
                })
            }
        })
    }
}

/// `{"type":"initial_stats","data":STATS}`, encoded.
pub fn initial_stats(stats: &Stats) -> Bytes {
    ServerMessage::InitialStats(*stats).to_json()
}

/// `{"type":"heartbeat","data":STATS}`, encoded.
pub fn heartbeat(stats: &Stats) -> Bytes {
    ServerMessage::Heartbeat(*stats).to_json()
}

/// An ingested event, encoded as it is published.
pub fn event(event: &NewEvent) -> Bytes {
    ServerMessage::event(event).to_json()
}

/// `visitor_connected` / `visitor_disconnected`, encoded.
pub fn presence(change: Presence, visitor_id: VisitorId, timestamp: i64) -> Bytes {
    ServerMessage::presence(change, visitor_id, timestamp).to_json()
}

/// `{"type":"pong","time":…}`, encoded.
pub fn pong(time: i64) -> Bytes {
    ServerMessage::Pong { time }.to_json()
}

/// `{"type":"error","error":"<sentence>"}`, encoded.
pub fn error(sentence: &str) -> Bytes {
    ServerMessage::error(sentence.to_owned()).to_json()
}

/// The `"type"` string of a JSON object, if it has one.
pub fn read_kind(json: &[u8]) -> Option<Box<str>> {
    // serde's derived structs also accept arrays (`["heartbeat"]`): only objects count.
    if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
    }
    let k: Kind = serde_json::from_slice(json).ok()?;
    k.kind.map(|k| k.into_owned().into_boxed_str())
}
