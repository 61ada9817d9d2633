//! What the hub carries: one broadcast, encoded once, with what every session needs to
//! decide whether and how to send it.
//!
//! - `json`: the contract bytes, exactly as published (a payload forwarded from Redis
//!   stays byte for byte). A client that asked for nothing gets these.
//! - `kind`: the `"type"` of the message, read once per broadcast so that subscription
//!   filters compare strings instead of parsing JSON per client.
//! - `seq`: the position of an event in the stream (catch-up after a reconnect);
//!   figures carry none, since only the latest figures matter.
//! - the other encodings (JSON with `seq`, Protocol Buffers) are built on first need,
//!   once per broadcast, and shared by every session that wants them: the cost of a
//!   variant is paid once per message, never once per client.
//!
//! An envelope is made from a typed `ServerMessage` (`Envelope::message`: the JSON and
//! the protobuf both come from it) or from foreign bytes (`Envelope::new`: a payload
//! read from the shared Redis channel, whose kind is read once; its protobuf is read
//! from its JSON once, when a protobuf client first needs it).

use std::sync::OnceLock;

use bytes::Bytes;

pub use crate::protocol::read_kind;
use crate::protocol::{self, ServerMessage};

/// One broadcast and its lazily built encodings.
#[derive(Debug)]
pub struct Envelope {
    json: Bytes,
    /// The `"type"` of `json`; empty when the payload has none (a foreign publisher's
    /// payload that is not a JSON object with a string `type`).
    kind: Box<str>,
    seq: Option<u64>,
    /// The typed message, when the envelope was made from one (`None`: foreign bytes).
    message: Option<ServerMessage>,
    /// `json` with `"seq":N` added as the last field, for clients that opted in.
    json_with_seq: OnceLock<Bytes>,
    /// The `ServerMessage` of `proto/maicivy_analytics.proto`.
    proto: OnceLock<Bytes>,
}

/// The server's messages that carry figures: always delivered, whatever the
/// subscription, never numbered, never replayed.
pub fn is_stats_kind(kind: &str) -> bool {
    matches!(kind, "initial_stats" | "heartbeat")
}

impl Envelope {
    /// Wraps contract bytes; reads the message kind once.
    pub fn new(json: Bytes) -> Self {
        let kind = read_kind(&json).unwrap_or_default();
        Self {
            json,
            kind,
            seq: None,
            message: None,
            json_with_seq: OnceLock::new(),
            proto: OnceLock::new(),
        }
    }

    /// Encodes a typed message once; its protobuf is built from it on first need.
    pub fn message(message: ServerMessage) -> Self {
        Self {
            json: message.to_json(),
            kind: message.kind().into(),
            seq: None,
            message: Some(message),
            json_with_seq: OnceLock::new(),
            proto: OnceLock::new(),
        }
    }

    /// Numbers the message. Called by the hub, before the envelope is shared.
    pub fn with_seq(mut self, seq: u64) -> Self {
        self.seq = Some(seq);
        self
    }

    /// What keeping this envelope may cost, in bytes: its JSON three times over (the
    /// contract bytes, the JSON with `seq`, the protobuf, each at most about as large
    /// as the JSON once built). The replay buffer's byte ceiling counts this.
    pub fn retained_bytes(&self) -> usize {
        3 * self.json.len() + self.kind.len() + std::mem::size_of::<Self>()
    }

    /// The contract bytes, as published.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn kind(&self) -> &str {
        &self.kind
    }

    pub fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Figures (`initial_stats`, `heartbeat`) rather than an event.
    pub fn is_stats(&self) -> bool {
        is_stats_kind(&self.kind)
    }

    /// The JSON with `"seq":N` as its last field, built once. Without a sequence
    /// number, or when the payload is not a JSON object, the contract bytes.
    pub fn json_with_seq(&self) -> &Bytes {
        let Some(seq) = self.seq else {
            return &self.json;
        };
        self.json_with_seq
            .get_or_init(|| append_seq(&self.json, seq).unwrap_or_else(|| self.json.clone()))
    }

    /// The Protocol Buffers encoding, built once.
    pub fn proto(&self) -> &Bytes {
        self.proto.get_or_init(|| match &self.message {
            Some(message) => message.to_proto(self.seq),
            None => protocol::foreign_to_proto(&self.json, &self.kind, self.seq),
        })
    }
}

/// `{…}` → `{…,"seq":N}`, without re-serialising: the fields already there keep their
/// exact bytes. `None` when the payload is not a non-empty JSON object.
fn append_seq(json: &[u8], seq: u64) -> Option<Bytes> {
    let end = json.iter().rposition(|b| !b.is_ascii_whitespace())?;
    if json[end] != b'}' || json.first() != Some(&b'{') {
        return None;
    }
    let body = &json[..end];
    // `{}` has no field to put a comma after.
    let empty = body[1..].iter().all(u8::is_ascii_whitespace);
    let mut out = Vec::with_capacity(end + 24);
    out.extend_from_slice(body);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(b"\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'}');
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_read_once_and_the_bytes_are_kept() {
        let raw = Bytes::from_static(br#"{"type":"page_view","visitor_id":"x","data":{}}"#);
        let e = Envelope::new(raw.clone());
        assert_eq!(e.kind(), "page_view");
        assert!(!e.is_stats());
        assert_eq!(e.json().as_ptr(), raw.as_ptr(), "the same allocation");
        assert!(Envelope::new(Bytes::from_static(br#"{"type":"heartbeat","data":{}}"#)).is_stats());
        assert_eq!(Envelope::new(Bytes::from_static(b"not json")).kind(), "");
        assert_eq!(
            Envelope::new(Bytes::from_static(br#"{"type":3}"#)).kind(),
            ""
        );
    }

    #[test]
    fn seq_is_appended_without_touching_the_other_fields() {
        let e = Envelope::new(Bytes::from_static(br#"{"type":"a","n":1.50}"#)).with_seq(7);
        assert_eq!(&e.json_with_seq()[..], br#"{"type":"a","n":1.50,"seq":7}"#);
        // Built once: the same bytes the second time.
        assert_eq!(e.json_with_seq().as_ptr(), e.json_with_seq().as_ptr());
        let parsed: serde_json::Value = serde_json::from_slice(e.json_with_seq()).unwrap();
        assert_eq!(parsed["seq"], 7);

        assert_eq!(append_seq(b"{ }\n", 1).unwrap(), &br#"{ "seq":1}"#[..]);
        assert_eq!(append_seq(b"[1]", 1), None);
        assert_eq!(append_seq(b"", 1), None);
        // Without a number, the contract bytes.
        let plain = Envelope::new(Bytes::from_static(br#"{"type":"a"}"#));
        assert_eq!(&plain.json_with_seq()[..], br#"{"type":"a"}"#);
        // Not an object: sent as it came.
        let odd = Envelope::new(Bytes::from_static(b"\"hello\"")).with_seq(3);
        assert_eq!(&odd.json_with_seq()[..], b"\"hello\"");
    }
}
