//! The protocol extensions, seen from one connection: what a client may ask for beyond
//! CONTRACT.md, and how each broadcast is rendered for it.
//!
//! - a format, chosen by the WebSocket subprotocol: JSON (the default) or Protocol
//!   Buffers (`maicivy.v1.proto`, see `proto`);
//! - a subscription filter (`subscribe` / `unsubscribe`, or `?events=a,b`);
//! - catch-up (`resume`, or `?resume=EPOCH:SEQ`): events then carry `"seq"`, and the
//!   ones missed while away are replayed from the hub's buffer (see `replay`);
//! - permessage-deflate, negotiated by yawc when the client offers it.
//!
//! Rendering picks one of the envelope's encodings, each built once per broadcast;
//! nothing here serialises a message per client. A client that asks for none of this
//! gets the contract's bytes untouched.

use std::sync::{Arc, LazyLock};

use axum::http::Uri;
use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use yawc::{DeflatePool, Frame, Options};

use crate::domain::VisitorId;
use crate::envelope::{Envelope, read_kind};
use crate::proto;
use crate::protocol::{self, ClientMessage};
use crate::replay::{Cursor, Gap};
use crate::subscriptions::Filter;

/// The subprotocol of the binary protocol.
pub const PROTO_SUBPROTOCOL: &str = "maicivy.v1.proto";
/// The subprotocol of the JSON protocol, for clients that must name one (JSON is also
/// what a client that names none gets).
pub const JSON_SUBPROTOCOL: &str = "maicivy.v1.json";

/// Messages smaller than this are sent uncompressed even when deflate was negotiated.
/// Without context takeover a message cannot refer to earlier ones, so the typical
/// event (about 200 bytes of JSON) shrinks by a few percent for a compression pass per
/// client; a large `event_data` shrinks by half or more (see BENCHMARKS figures in the
/// README's protocol extensions).
pub const COMPRESSION_THRESHOLD: usize = 512;

/// Idle deflate state kept for reuse, shared by every connection of the process:
/// memory follows the messages being compressed at one moment (about the number of
/// worker threads), not the number of connections.
static DEFLATE_POOL: LazyLock<DeflatePool> = LazyLock::new(|| DeflatePool::new(16));

/// Adds permessage-deflate to a connection's options. It is only used when the client
/// offers it; both directions go without context takeover (RFC 7692 lets the server
/// impose that), so a connection holds no compressor between messages.
pub fn with_compression(options: Options) -> Options {
    options
        .with_low_latency_compression()
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_deflate_pool(DEFLATE_POOL.clone())
        .with_compression_threshold(COMPRESSION_THRESHOLD)
}

/// How a connection's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Proto,
}

/// The format asked for in `Sec-WebSocket-Protocol` offers, and the subprotocol to
/// answer with (`None`: answer none, as for a client that offered none).
pub fn negotiate<'a>(offers: impl IntoIterator<Item = &'a str>) -> (Format, Option<&'static str>) {
    let mut json = false;
    for offer in offers.into_iter().flat_map(|v| v.split(',')).map(str::trim) {
        if offer == PROTO_SUBPROTOCOL {
            return (Format::Proto, Some(PROTO_SUBPROTOCOL));
        }
        json |= offer == JSON_SUBPROTOCOL;
    }
    (Format::Json, json.then_some(JSON_SUBPROTOCOL))
}

/// What a client asked for in the query of its connection URL.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Connect {
    pub filter: Filter,
    pub resume: Option<Resume>,
}

#[derive(Deserialize)]
struct ConnectQuery {
    resume: Option<String>,
    events: Option<String>,
}

impl Connect {
    /// `?events=a,b` and `?resume=EPOCH:SEQ` (or a bare `?resume` to number events from
    /// now on). The error is a sentence.
    pub fn from_uri(uri: &Uri) -> Result<Self, String> {
        let axum::extract::Query(q) = axum::extract::Query::<ConnectQuery>::try_from_uri(uri)
            .map_err(|_| "the query string of the WebSocket URL cannot be read.".to_owned())?;
        let filter = match q.events {
            Some(list) => Filter::from_query(&list)?,
            None => Filter::All,
        };
        let resume = match q.resume.as_deref().map(str::trim) {
            None => None,
            Some("") => Some(Resume { from: None }),
            Some(v) => {
                let parsed = v
                    .rsplit_once(':')
                    .and_then(|(epoch, seq)| Some((epoch.to_owned(), seq.parse().ok()?)))
                    .filter(|(epoch, _)| !epoch.is_empty());
                match parsed {
                    Some(from) => Some(Resume { from: Some(from) }),
                    None => {
                        return Err(
                            "resume must be EPOCH:SEQ, the epoch and the last seq you received."
                                .to_owned(),
                        );
                    }
                }
            }
        };
        Ok(Self { filter, resume })
    }
}

/// A `resume` request: `from` is the epoch and the last sequence number the client
/// received; `None` asks only for numbered events from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub from: Option<(String, u64)>,
}

/// A message a client may send, the contract's and the extensions'.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Core(ClientMessage),
    Subscribe(Vec<Box<str>>),
    Unsubscribe(Vec<Box<str>>),
    Resume(Resume),
}

const KNOWN: &str = "expected refresh_stats, ping, heartbeat, subscribe, unsubscribe or resume";

/// Parses a text frame. The error is a sentence to send back.
pub fn parse_text(text: &str) -> Result<Request, String> {
    #[derive(Deserialize)]
    struct Raw {
        events: Option<serde_json::Value>,
        epoch: Option<serde_json::Value>,
        last_seq: Option<serde_json::Value>,
    }
    let kind = read_kind(text.as_bytes());
    match kind.as_deref() {
        Some(k @ ("subscribe" | "unsubscribe")) => {
            let raw: Raw = serde_json::from_str(text).map_err(|_| bad_shape())?;
            let events = match raw.events {
                Some(serde_json::Value::Array(items)) => items
                    .into_iter()
                    .map(|v| match v {
                        serde_json::Value::String(s) => Ok(s.into_boxed_str()),
                        _ => Err(bad_events()),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(bad_events()),
            };
            Ok(if k == "subscribe" {
                Request::Subscribe(events)
            } else {
                Request::Unsubscribe(events)
            })
        }
        Some("resume") => {
            let raw: Raw = serde_json::from_str(text).map_err(|_| bad_shape())?;
            let epoch = match raw.epoch {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
                Some(_) => return Err(bad_resume()),
            };
            let last_seq = match raw.last_seq {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(bad_resume)?),
            };
            match (epoch, last_seq) {
                (Some(e), Some(s)) => Ok(Request::Resume(Resume { from: Some((e, s)) })),
                (None, None) => Ok(Request::Resume(Resume { from: None })),
                _ => Err(bad_resume()),
            }
        }
        Some("refresh_stats" | "ping" | "heartbeat") | None => {
            // The contract's messages, and the contract's sentences for bad input.
            protocol::parse_client_message(text).map(Request::Core)
        }
        Some(other) => {
            let shown: String = other.chars().take(60).collect();
            Err(format!("unknown message type {shown:?}; {KNOWN}."))
        }
    }
}

/// Parses a binary frame: a `ClientMessage` of the published `.proto`.
pub fn parse_binary(payload: &[u8], format: Format) -> Result<Request, String> {
    use proto::client_message::Body;
    if format != Format::Proto {
        return Err("binary messages are only understood with the maicivy.v1.proto subprotocol; send JSON text such as {\"type\":\"ping\"}.".to_owned());
    }
    let msg = proto::ClientMessage::decode(payload).map_err(|_| {
        "this binary message is not a ClientMessage of maicivy_analytics.proto.".to_owned()
    })?;
    match msg.body {
        Some(Body::RefreshStats(_)) => Ok(Request::Core(ClientMessage::RefreshStats)),
        Some(Body::Ping(p)) => {
            // As in JSON: an invalid id is ignored, the ping still answered.
            let visitor_id = p
                .visitor_id
                .as_deref()
                .and_then(|s| VisitorId::parse(s).ok());
            Ok(Request::Core(ClientMessage::Ping { visitor_id }))
        }
        Some(Body::Subscribe(t)) => Ok(Request::Subscribe(boxed(t.events))),
        Some(Body::Unsubscribe(t)) => Ok(Request::Unsubscribe(boxed(t.events))),
        Some(Body::Resume(r)) => match (r.epoch, r.last_seq) {
            (Some(e), Some(s)) if !e.is_empty() => {
                Ok(Request::Resume(Resume { from: Some((e, s)) }))
            }
            (None, None) => Ok(Request::Resume(Resume { from: None })),
            _ => Err(bad_resume()),
        },
        None => Err(format!("this ClientMessage is empty; {KNOWN}.")),
    }
}

fn boxed(v: Vec<String>) -> Vec<Box<str>> {
    v.into_iter().map(String::into_boxed_str).collect()
}

fn bad_shape() -> String {
    protocol::NOT_AN_OBJECT.to_owned()
}

fn bad_events() -> String {
    "subscribe and unsubscribe need \"events\", a list of event types such as [\"page_view\"]."
        .to_owned()
}

fn bad_resume() -> String {
    "resume needs both \"epoch\" (a string) and \"last_seq\" (a number), or neither to start from now.".to_owned()
}

/// `{"type":"subscribed","events":[…]}` (with `"except":[…]` after `["*"]`).
pub fn subscribed(filter: &Filter) -> Bytes {
    #[derive(Serialize)]
    struct M<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        events: Vec<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        except: Vec<&'a str>,
    }
    let (events, except) = filter.describe();
    protocol::to_bytes(&M {
        kind: "subscribed",
        events,
        except,
    })
}

/// `{"type":"resumed","epoch":…,"last_seq":N,"replayed":K}`
pub fn resumed(epoch: &str, last_seq: u64, replayed: u64) -> Bytes {
    #[derive(Serialize)]
    struct M<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        epoch: &'a str,
        last_seq: u64,
        replayed: u64,
    }
    protocol::to_bytes(&M {
        kind: "resumed",
        epoch,
        last_seq,
        replayed,
    })
}

/// `{"type":"resume_failed","epoch":…,"last_seq":N,"error":"<sentence>"}`
pub fn resume_failed(epoch: &str, last_seq: u64, sentence: &str) -> Bytes {
    #[derive(Serialize)]
    struct M<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        epoch: &'a str,
        last_seq: u64,
        error: &'a str,
    }
    protocol::to_bytes(&M {
        kind: "resume_failed",
        epoch,
        last_seq,
        error: sentence,
    })
}

/// One frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub payload: Bytes,
    pub binary: bool,
}

impl Outgoing {
    pub fn into_frame(self) -> Frame {
        if self.binary {
            Frame::binary(self.payload)
        } else {
            Frame::text(self.payload)
        }
    }
}

/// What one connection asked for.
#[derive(Debug, Default)]
pub struct Preferences {
    pub format: Format,
    pub filter: Filter,
    /// The client asked for catch-up: its JSON events carry `"seq"`.
    pub numbered: bool,
}

impl Preferences {
    /// The frame of a broadcast for this connection, or `None` when its filter leaves
    /// it out.
    pub fn broadcast(&self, envelope: &Envelope) -> Option<Outgoing> {
        if !self.filter.admits(envelope.kind(), envelope.is_stats()) {
            return None;
        }
        Some(match self.format {
            Format::Json if self.numbered => Outgoing {
                payload: envelope.json_with_seq().clone(),
                binary: false,
            },
            Format::Json => Outgoing {
                payload: envelope.json().clone(),
                binary: false,
            },
            Format::Proto => Outgoing {
                payload: envelope.proto().clone(),
                binary: true,
            },
        })
    }

    /// A reply to this client alone (a pong, an error, `initial_stats`, …), given as
    /// its JSON encoding.
    pub fn reply(&self, json: Bytes) -> Outgoing {
        match self.format {
            Format::Json => Outgoing {
                payload: json,
                binary: false,
            },
            Format::Proto => {
                let kind = read_kind(&json).unwrap_or_default();
                Outgoing {
                    payload: proto::from_json(&json, &kind, None),
                    binary: true,
                }
            }
        }
    }

    /// Acts on `subscribe` / `unsubscribe`: the `subscribed` reply, or an `error`.
    pub fn change_subscription(&mut self, subscribe: bool, names: Vec<Box<str>>) -> Outgoing {
        let changed = if subscribe {
            self.filter.subscribe(names)
        } else {
            self.filter.unsubscribe(names)
        };
        self.reply(match changed {
            Ok(()) => subscribed(&self.filter),
            Err(sentence) => protocol::error(&sentence),
        })
    }

    /// Acts on `resume`: numbers events from now on, and answers with `resumed` followed
    /// by the missed events that pass the filter, or with `resume_failed`.
    ///
    /// `joined` is the stream's position when the connection joined the hub: later
    /// events reach it through the hub, so `missed(epoch, last_seq)` is asked only for
    /// those up to `joined.seq`, and nothing arrives twice.
    pub fn resume(
        &mut self,
        request: &Resume,
        joined: &Cursor,
        missed: impl FnOnce(&str, u64) -> Result<Vec<Arc<Envelope>>, Gap>,
    ) -> Vec<Outgoing> {
        self.numbered = true;
        let Some((epoch, last_seq)) = &request.from else {
            return vec![self.reply(resumed(&joined.epoch, joined.seq, 0))];
        };
        match missed(epoch, *last_seq) {
            Ok(events) => {
                let replay: Vec<Outgoing> =
                    events.iter().filter_map(|e| self.broadcast(e)).collect();
                let mut out = Vec::with_capacity(replay.len() + 1);
                out.push(self.reply(resumed(&joined.epoch, *last_seq, replay.len() as u64)));
                out.extend(replay);
                out
            }
            Err(gap) => vec![self.reply(resume_failed(&joined.epoch, joined.seq, &gap.sentence()))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::Replay;

    #[test]
    fn the_subprotocol_picks_the_format() {
        assert_eq!(negotiate([]), (Format::Json, None));
        assert_eq!(negotiate(["chat, superchat"]), (Format::Json, None));
        assert_eq!(
            negotiate(["maicivy.v1.json, maicivy.v1.proto"]),
            (Format::Proto, Some(PROTO_SUBPROTOCOL))
        );
        assert_eq!(
            negotiate(["maicivy.v1.json"]),
            (Format::Json, Some(JSON_SUBPROTOCOL))
        );
    }

    #[test]
    fn the_query_asks_for_filters_and_catch_up() {
        let c = |q: &str| Connect::from_uri(&format!("/ws/analytics{q}").parse().unwrap());
        assert_eq!(c("").unwrap(), Connect::default());
        let r = c("?resume=ab12%3A42&events=page_view").unwrap();
        assert_eq!(
            r.resume,
            Some(Resume {
                from: Some(("ab12".into(), 42))
            })
        );
        assert!(r.filter.admits("page_view", false));
        assert!(!r.filter.admits("pdf_download", false));
        assert_eq!(c("?resume").unwrap().resume, Some(Resume { from: None }));
        assert_eq!(c("?resume=").unwrap().resume, Some(Resume { from: None }));
        assert!(c("?resume=nope").unwrap_err().ends_with('.'));
        assert!(c("?resume=:3").is_err());
        assert!(c("?events=Bad!").is_err());
    }

    #[test]
    fn client_messages_of_the_extensions() {
        assert_eq!(
            parse_text(r#"{"type":"subscribe","events":["page_view"]}"#),
            Ok(Request::Subscribe(vec!["page_view".into()]))
        );
        assert_eq!(
            parse_text(r#"{"type":"unsubscribe","events":[]}"#),
            Ok(Request::Unsubscribe(vec![]))
        );
        assert_eq!(
            parse_text(r#"{"type":"resume","epoch":"e","last_seq":3}"#),
            Ok(Request::Resume(Resume {
                from: Some(("e".into(), 3))
            }))
        );
        assert_eq!(
            parse_text(r#"{"type":"resume"}"#),
            Ok(Request::Resume(Resume { from: None }))
        );
        assert_eq!(
            parse_text(r#"{"type":"ping"}"#),
            Ok(Request::Core(ClientMessage::Ping { visitor_id: None }))
        );
        for bad in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","events":[1]}"#,
            r#"{"type":"resume","epoch":"e"}"#,
            r#"{"type":"resume","epoch":"e","last_seq":-1}"#,
            r#"{"type":"dance"}"#,
            "nope",
        ] {
            let e = parse_text(bad).unwrap_err();
            assert!(e.ends_with('.'), "{bad}: {e}");
        }
        let ping = proto::ClientMessage {
            body: Some(proto::client_message::Body::Ping(proto::Ping {
                visitor_id: None,
            })),
        }
        .encode_to_vec();
        assert_eq!(
            parse_binary(&ping, Format::Proto),
            Ok(Request::Core(ClientMessage::Ping { visitor_id: None }))
        );
        assert!(parse_binary(&ping, Format::Json).is_err());
        assert!(parse_binary(b"\xff\xff", Format::Proto).is_err());
    }

    #[test]
    fn a_legacy_connection_gets_the_contract_bytes() {
        let raw = Bytes::from_static(br#"{"type":"page_view","visitor_id":"v"}"#);
        let e = Envelope::new(raw.clone()).with_seq(5);
        let out = Preferences::default().broadcast(&e).unwrap();
        assert_eq!(out.payload, raw);
        assert_eq!(out.payload.as_ptr(), raw.as_ptr(), "shared, not copied");
        assert!(!out.binary);
    }

    #[test]
    fn resuming_replays_the_missed_events_through_the_filter() {
        let mut replay = Replay::with_epoch("ep", 8);
        for kind in ["page_view", "pdf_download", "page_view"] {
            replay.record(Envelope::new(Bytes::from(format!(
                r#"{{"type":"{kind}"}}"#
            ))));
        }
        let joined = replay.cursor();
        let mut p = Preferences {
            filter: Filter::from_query("page_view").unwrap(),
            ..Default::default()
        };
        let out = p.resume(
            &Resume {
                from: Some(("ep".into(), 0)),
            },
            &joined,
            |e, s| replay.missed(e, s, joined.seq),
        );
        let texts: Vec<&[u8]> = out.iter().map(|o| &o.payload[..]).collect();
        assert_eq!(
            texts,
            vec![
                &br#"{"type":"resumed","epoch":"ep","last_seq":0,"replayed":2}"#[..],
                br#"{"type":"page_view","seq":1}"#,
                br#"{"type":"page_view","seq":3}"#,
            ]
        );
        let failed = p.resume(
            &Resume {
                from: Some(("old".into(), 1)),
            },
            &joined,
            |e, s| replay.missed(e, s, joined.seq),
        );
        let v: serde_json::Value = serde_json::from_slice(&failed[0].payload).unwrap();
        assert_eq!(v["type"], "resume_failed");
        assert_eq!(v["epoch"], "ep");
        assert_eq!(v["last_seq"], 3);
    }

    #[test]
    fn a_protobuf_connection_gets_binary_frames() {
        let p = Preferences {
            format: Format::Proto,
            ..Default::default()
        };
        let out = p.reply(protocol::pong(7));
        assert!(out.binary);
        let m = proto::ServerMessage::decode(&out.payload[..]).unwrap();
        assert_eq!(m.kind, "pong");
        assert_eq!(
            m.body,
            Some(proto::server_message::Body::Pong(proto::Pong { time: 7 }))
        );
    }
}
