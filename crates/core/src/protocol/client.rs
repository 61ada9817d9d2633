//! Client frames parsed once into a `ClientMessage`: `parse_text` for JSON text,
//! `parse_binary` for Protocol Buffers; a refusal is a sentence to send back.

use std::borrow::Cow;

use prost::Message as _;
use serde::Deserialize;

use super::{ClientMessage, Resume};
use crate::domain::VisitorId;
use crate::proto;

/// The answer to a client message that is not a JSON object.
pub const NOT_AN_OBJECT: &str = "messages must be JSON objects such as {\"type\":\"ping\"}.";

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
