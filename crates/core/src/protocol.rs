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

use std::borrow::Cow;

use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::domain::{NewEvent, Stats, VisitorId, rfc3339};
use crate::proto;
use crate::subscriptions::Filter;

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

/// Serialises a message body; these plain structs cannot fail (no maps with
/// non-string keys).
fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("serialising a protocol message"))
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

    /// The `ServerMessage` of `proto/maicivy_analytics.proto`, numbered `seq`.
    pub fn to_proto(&self, seq: Option<u64>) -> Bytes {
        use proto::server_message::Body;
        let body = match self {
            Self::InitialStats(s) | Self::Heartbeat(s) => Body::Stats((*s).into()),
            Self::Event(e) => Body::Event(proto::Event {
                visitor_id: e.visitor_id.clone(),
                timestamp: e.timestamp.clone(),
                page_url: e.page_url.clone(),
                data_json: serde_json::to_string(&e.data).expect("a JSON object"),
            }),
            Self::Presence {
                visitor_id,
                timestamp,
                ..
            } => Body::Presence(proto::Presence {
                visitor_id: visitor_id.clone(),
                timestamp: *timestamp,
            }),
            Self::Pong { time } => Body::Pong(proto::Pong { time: *time }),
            Self::Error { error } => Body::Error(proto::Error {
                error: error.clone().into_owned(),
            }),
            Self::Subscribed { events, except } => Body::Subscribed(proto::Subscribed {
                events: events.clone(),
                except: except.clone(),
            }),
            Self::Resumed {
                epoch,
                last_seq,
                replayed,
            } => Body::Resumed(proto::Resumed {
                epoch: epoch.clone(),
                last_seq: *last_seq,
                replayed: *replayed,
            }),
            Self::ResumeFailed {
                epoch,
                last_seq,
                error,
            } => Body::ResumeFailed(proto::ResumeFailed {
                epoch: epoch.clone(),
                last_seq: *last_seq,
                error: error.clone(),
            }),
        };
        proto_frame(self.kind(), seq, body)
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

/// The protobuf frame of a foreign payload (see `ServerMessage::from_json`): its
/// typed shape when it has a known one, else its JSON text, so that nothing a JSON
/// client would get is lost for a protobuf client.
pub fn foreign_to_proto(json: &[u8], kind: &str, seq: Option<u64>) -> Bytes {
    match ServerMessage::from_json(json, kind) {
        Some(message) => message.to_proto(seq),
        None => proto_frame(
            kind,
            seq,
            proto::server_message::Body::Json(String::from_utf8_lossy(json).into_owned()),
        ),
    }
}

fn proto_frame(kind: &str, seq: Option<u64>, body: proto::server_message::Body) -> Bytes {
    Bytes::from(
        proto::ServerMessage {
            r#type: kind.to_owned(),
            seq,
            body: Some(body),
        }
        .encode_to_vec(),
    )
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

/// The answer to a client message that is not a JSON object.
pub const NOT_AN_OBJECT: &str = "messages must be JSON objects such as {\"type\":\"ping\"}.";

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

const KNOWN: &str = "expected refresh_stats, ping, heartbeat, subscribe, unsubscribe or resume";

/// Parses one client text frame, in one pass. The error is a sentence to send back.
pub fn parse_text(text: &str) -> Result<ClientMessage, String> {
    use serde_json::Value;
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(default)]
        visitor_id: Option<Value>,
        #[serde(default)]
        events: Option<Value>,
        #[serde(default)]
        epoch: Option<Value>,
        #[serde(default)]
        last_seq: Option<Value>,
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
                Some(Value::String(s)) => VisitorId::parse(&s).ok(),
                _ => None,
            };
            Ok(ClientMessage::Ping { visitor_id })
        }
        k @ ("subscribe" | "unsubscribe") => {
            let events = match raw.events {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.into_boxed_str()),
                        _ => Err(bad_events()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad_events()),
            };
            Ok(if k == "subscribe" {
                ClientMessage::Subscribe(events)
            } else {
                ClientMessage::Unsubscribe(events)
            })
        }
        "resume" => {
            let epoch = match raw.epoch {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                Some(_) => return Err(bad_resume()),
            };
            let last_seq = match raw.last_seq {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(bad_resume)?),
            };
            resume(epoch, last_seq)
        }
        other => Err(format!(
            "unknown message type {:?}; {KNOWN}.",
            truncate(other, 60)
        )),
    }
}

/// Parses a binary frame: a `ClientMessage` of the published `.proto`.
pub fn parse_binary(payload: &[u8]) -> Result<ClientMessage, String> {
    use proto::client_message::Body;
    let msg = proto::ClientMessage::decode(payload).map_err(|_| {
        "this binary message is not a ClientMessage of maicivy_analytics.proto.".to_owned()
    })?;
    let boxed = |v: Vec<String>| v.into_iter().map(String::into_boxed_str).collect();
    match msg.body {
        Some(Body::RefreshStats(_)) => Ok(ClientMessage::RefreshStats),
        Some(Body::Ping(p)) => {
            // As in JSON: an invalid id is ignored, the ping still answered.
            let visitor_id = p
                .visitor_id
                .as_deref()
                .and_then(|s| VisitorId::parse(s).ok());
            Ok(ClientMessage::Ping { visitor_id })
        }
        Some(Body::Subscribe(t)) => Ok(ClientMessage::Subscribe(boxed(t.events))),
        Some(Body::Unsubscribe(t)) => Ok(ClientMessage::Unsubscribe(boxed(t.events))),
        Some(Body::Resume(r)) => resume(r.epoch, r.last_seq),
        None => Err(format!("this ClientMessage is empty; {KNOWN}.")),
    }
}

fn resume(epoch: Option<String>, last_seq: Option<u64>) -> Result<ClientMessage, String> {
    match (epoch, last_seq) {
        (Some(e), Some(s)) if !e.is_empty() => {
            Ok(ClientMessage::Resume(Resume { from: Some((e, s)) }))
        }
        (None, None) => Ok(ClientMessage::Resume(Resume { from: None })),
        _ => Err(bad_resume()),
    }
}

fn bad_events() -> String {
    "subscribe and unsubscribe need \"events\", a list of event types such as [\"page_view\"]."
        .to_owned()
}

fn bad_resume() -> String {
    "resume needs both \"epoch\" (a string) and \"last_seq\" (a number), or neither to start from now.".to_owned()
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
    use proto::server_message::Body;

    fn decode(b: &Bytes) -> proto::ServerMessage {
        proto::ServerMessage::decode(&b[..]).unwrap()
    }

    #[test]
    fn client_messages() {
        assert_eq!(
            parse_text(r#"{"type":"refresh_stats"}"#),
            Ok(ClientMessage::RefreshStats)
        );
        assert_eq!(
            parse_text(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
        let id = "3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34";
        assert_eq!(
            parse_text(&format!(r#"{{"type":"heartbeat","visitor_id":"{id}"}}"#)),
            Ok(ClientMessage::Ping {
                visitor_id: Some(VisitorId::parse(id).unwrap())
            })
        );
        assert_eq!(parse_text("nope").unwrap_err(), NOT_AN_OBJECT);
        assert_eq!(parse_text("[]").unwrap_err(), NOT_AN_OBJECT);
        assert_eq!(
            parse_text(r#"["refresh_stats"]"#).unwrap_err(),
            NOT_AN_OBJECT
        );
        assert_eq!(parse_text(r#"{"type":3}"#).unwrap_err(), NOT_AN_OBJECT);
        assert_eq!(
            parse_text("{}").unwrap_err(),
            "the message has no \"type\" field."
        );
        assert_eq!(
            parse_text(r#"{"type":"ping","visitor_id":"x"}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
        assert_eq!(
            parse_text(r#"{"type":"heartbeat","visitor_id":7}"#),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
    }

    #[test]
    fn client_messages_of_the_extensions() {
        assert_eq!(
            parse_text(r#"{"type":"subscribe","events":["page_view"]}"#),
            Ok(ClientMessage::Subscribe(vec!["page_view".into()]))
        );
        assert_eq!(
            parse_text(r#"{"type":"unsubscribe","events":[]}"#),
            Ok(ClientMessage::Unsubscribe(vec![]))
        );
        assert_eq!(
            parse_text(r#"{"type":"resume","epoch":"e","last_seq":3}"#),
            Ok(ClientMessage::Resume(Resume {
                from: Some(("e".into(), 3))
            }))
        );
        assert_eq!(
            parse_text(r#"{"type":"resume"}"#),
            Ok(ClientMessage::Resume(Resume { from: None }))
        );
        for bad in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","events":[1]}"#,
            r#"{"type":"resume","epoch":"e"}"#,
            r#"{"type":"resume","epoch":"","last_seq":1}"#,
            r#"{"type":"resume","epoch":"e","last_seq":-1}"#,
            r#"{"type":"dance"}"#,
            "nope",
        ] {
            let e = parse_text(bad).unwrap_err();
            assert!(e.ends_with('.'), "{bad}: {e}");
        }
        let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
        let e = parse_text(&long).unwrap_err();
        assert!(
            e.contains(&"é".repeat(60)) && !e.contains(&"é".repeat(61)),
            "{e}"
        );

        let encode = |body| proto::ClientMessage { body: Some(body) }.encode_to_vec();
        use proto::client_message::Body as C;
        assert_eq!(
            parse_binary(&encode(C::Ping(proto::Ping { visitor_id: None }))),
            Ok(ClientMessage::Ping { visitor_id: None })
        );
        assert_eq!(
            parse_binary(&encode(C::Resume(proto::Resume {
                epoch: Some("e".into()),
                last_seq: Some(2)
            }))),
            Ok(ClientMessage::Resume(Resume {
                from: Some(("e".into(), 2))
            }))
        );
        assert!(
            parse_binary(&encode(C::Resume(proto::Resume {
                epoch: Some(String::new()),
                last_seq: None
            })))
            .is_err()
        );
        assert!(parse_binary(b"\xff\xff").is_err());
        assert!(parse_binary(b"").unwrap_err().ends_with('.'));
    }

    fn stats() -> Stats {
        Stats {
            current_visitors: 12,
            unique_today: 145,
            total_events: 2340,
            letters_today: 23,
            timestamp: 1733683200,
        }
    }

    #[test]
    fn the_json_is_the_contracts_byte_for_byte() {
        assert_eq!(
            &initial_stats(&stats())[..],
            br#"{"type":"initial_stats","data":{"current_visitors":12,"unique_today":145,"total_events":2340,"letters_today":23,"timestamp":1733683200}}"#
        );
        let id = VisitorId::parse("3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34").unwrap();
        let mut data = serde_json::Map::new();
        data.insert("b".into(), 1.into());
        data.insert("a".into(), "x".into());
        let event = NewEvent {
            id: uuid::Uuid::nil(),
            event_type: crate::domain::EventType::parse("page_view").unwrap(),
            visitor_id: id,
            event_data: data,
            page_url: None,
            referrer: None,
            occurred_at: chrono::DateTime::from_timestamp(1733661296, 5).unwrap(),
        };
        assert_eq!(
            &super::event(&event)[..],
            br#"{"type":"page_view","visitor_id":"3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34","timestamp":"2024-12-08T12:34:56.000000005Z","page_url":"","data":{"a":"x","b":1}}"#
        );
        assert_eq!(
            &presence(Presence::Disconnected, id, 5)[..],
            br#"{"type":"visitor_disconnected","visitor_id":"3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34","timestamp":5}"#
        );
        assert_eq!(&pong(7)[..], br#"{"type":"pong","time":7}"#);
        assert_eq!(&error("no.")[..], br#"{"type":"error","error":"no."}"#);
        let f = Filter::from_query("b,a").unwrap();
        assert_eq!(
            &ServerMessage::subscribed(&f).to_json()[..],
            br#"{"type":"subscribed","events":["a","b"]}"#
        );
        let mut all_but = Filter::All;
        all_but.unsubscribe(vec!["a".into()]).unwrap();
        assert_eq!(
            &ServerMessage::subscribed(&all_but).to_json()[..],
            br#"{"type":"subscribed","events":["*"],"except":["a"]}"#
        );
        assert_eq!(
            &ServerMessage::Resumed {
                epoch: "ep".into(),
                last_seq: 1,
                replayed: 2
            }
            .to_json()[..],
            br#"{"type":"resumed","epoch":"ep","last_seq":1,"replayed":2}"#
        );
        assert_eq!(
            &ServerMessage::ResumeFailed {
                epoch: "ep".into(),
                last_seq: 1,
                error: "gone.".into()
            }
            .to_json()[..],
            br#"{"type":"resume_failed","epoch":"ep","last_seq":1,"error":"gone."}"#
        );
    }

    #[test]
    fn the_protobuf_of_a_typed_message_and_of_foreign_bytes_agree() {
        let typed = [
            ServerMessage::Heartbeat(stats()),
            ServerMessage::Event(Event {
                event_type: "letter_generate".into(),
                visitor_id: "v".into(),
                timestamp: "2025-12-08T12:34:56Z".into(),
                page_url: Some("/l".into()),
                data: serde_json::from_str(r#"{"a":1}"#).unwrap(),
            }),
            ServerMessage::Pong { time: 3 },
            ServerMessage::error("no."),
            ServerMessage::Resumed {
                epoch: "e".into(),
                last_seq: 1,
                replayed: 0,
            },
        ];
        for m in typed {
            let json = m.to_json();
            let kind = read_kind(&json).unwrap();
            assert_eq!(&*kind, m.kind());
            assert_eq!(ServerMessage::from_json(&json, &kind).as_ref(), Some(&m));
            assert_eq!(foreign_to_proto(&json, &kind, Some(4)), m.to_proto(Some(4)));
        }
        let ev = decode(
            &ServerMessage::from_json(
                br#"{"type":"x","visitor_id":"v","timestamp":"t","data":{"a":1}}"#,
                "x",
            )
            .unwrap()
            .to_proto(Some(9)),
        );
        assert_eq!((ev.r#type.as_str(), ev.seq), ("x", Some(9)));
        assert_eq!(
            ev.body,
            Some(Body::Event(proto::Event {
                visitor_id: "v".into(),
                timestamp: "t".into(),
                page_url: None,
                data_json: r#"{"a":1}"#.into(),
            }))
        );
        let odd = decode(&foreign_to_proto(br#"{"type":"x","foo":1}"#, "x", Some(1)));
        assert_eq!(odd.body, Some(Body::Json(r#"{"type":"x","foo":1}"#.into())));
    }
}
