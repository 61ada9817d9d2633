//! One WebSocket session's preferences, and how each message is rendered for it.
//!
//! - a subscription filter (`subscribe` / `unsubscribe`, or `?events=a,b`);
//! - catch-up (`resume`, or `?resume=EPOCH:SEQ`): events then carry `"seq"`, and the
//!   ones missed while away are replayed from the hub's buffer (see `replay`);
//! - the format picked at the handshake (see `handshake`).
//!
//! Rendering picks one of the envelope's encodings, each built once per broadcast;
//! nothing here serialises a message per client. A client that asks for none of this
//! gets the contract's bytes untouched.

use std::sync::Arc;

use bytes::Bytes;
use yawc::Frame;

use super::handshake::Format;
use crate::envelope::Envelope;
use crate::protocol::{Resume, ServerMessage};
use crate::replay::{Cursor, Gap};
use crate::subscriptions::Filter;

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
    /// The visitors this connection's pings have marked active.
    pub marks: PresenceMarks,
}

/// At most this many distinct visitors may be marked active by the pings of one
/// connection (a dashboard or a page marks one).
pub const MAX_MARKED_VISITORS: usize = 4;

/// The visitors a connection's `ping`/`heartbeat` may mark active: the first
/// `MAX_MARKED_VISITORS` distinct ids it names, again and again; pings naming more
/// are still answered with a pong but mark nobody. So one connection cannot inflate
/// `current_visitors`, nor make every client receive `visitor_connected` for made-up
/// visitors. The limit holds with and without JWT auth (with auth on, every
/// connection presented a token).
#[derive(Debug, Default)]
pub struct PresenceMarks {
    seen: Vec<crate::domain::VisitorId>,
}

impl PresenceMarks {
    /// Whether this connection may mark `visitor` active.
    pub fn admit(&mut self, visitor: crate::domain::VisitorId) -> bool {
        if self.seen.contains(&visitor) {
            return true;
        }
        if self.seen.len() < MAX_MARKED_VISITORS {
            self.seen.push(visitor);
            return true;
        }
        false
    }
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

    /// A reply to this client alone (a pong, an error, …), encoded for it.
    pub fn reply(&self, message: ServerMessage) -> Outgoing {
        match self.format {
            Format::Json => Outgoing {
                payload: message.to_json(),
                binary: false,
            },
            Format::Proto => Outgoing {
                payload: message.to_proto(None),
                binary: true,
            },
        }
    }

    /// A message encoded once for many sessions (`initial_stats`), unfiltered and
    /// unnumbered, in this client's format.
    pub fn send(&self, envelope: &Envelope) -> Outgoing {
        match self.format {
            Format::Json => Outgoing {
                payload: envelope.json().clone(),
                binary: false,
            },
            Format::Proto => Outgoing {
                payload: envelope.proto().clone(),
                binary: true,
            },
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
            Ok(()) => ServerMessage::subscribed(&self.filter),
            Err(sentence) => ServerMessage::error(sentence),
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
            return vec![self.reply(resumed(joined, joined.seq, 0))];
        };
        match missed(epoch, *last_seq) {
            Ok(events) => {
                let replay: Vec<Outgoing> =
                    events.iter().filter_map(|e| self.broadcast(e)).collect();
                let mut out = Vec::with_capacity(replay.len() + 1);
                out.push(self.reply(resumed(joined, *last_seq, replay.len() as u64)));
                out.extend(replay);
                out
            }
            Err(gap) => vec![self.reply(ServerMessage::ResumeFailed {
                epoch: joined.epoch.to_string(),
                last_seq: joined.seq,
                error: gap.sentence(),
            })],
        }
    }
}

fn resumed(joined: &Cursor, last_seq: u64, replayed: u64) -> ServerMessage {
    ServerMessage::Resumed {
        epoch: joined.epoch.to_string(),
        last_seq,
        replayed,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::proto;
    use crate::replay::Replay;

    #[test]
    fn a_connection_marks_at_most_a_few_visitors() {
        let id = |n: u128| crate::domain::VisitorId::from_uuid(uuid::Uuid::from_u128(n));
        let mut marks = PresenceMarks::default();
        for n in 0..MAX_MARKED_VISITORS as u128 {
            assert!(marks.admit(id(n)));
        }
        assert!(!marks.admit(id(99)), "one visitor too many");
        assert!(!marks.admit(id(100)));
        // The ones already marked may keep pinging.
        assert!(marks.admit(id(0)));
        assert!(marks.admit(id(MAX_MARKED_VISITORS as u128 - 1)));
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
        let out = p.reply(ServerMessage::Pong { time: 7 });
        assert!(out.binary);
        let m = proto::ServerMessage::decode(&out.payload[..]).unwrap();
        assert_eq!(m.r#type, "pong");
        assert_eq!(
            m.body,
            Some(proto::server_message::Body::Pong(proto::Pong { time: 7 }))
        );
        // A message shared by many sessions: its protobuf is built once.
        let shared = Envelope::message(ServerMessage::Pong { time: 8 });
        assert_eq!(
            p.send(&shared).payload.as_ptr(),
            p.send(&shared).payload.as_ptr()
        );
        assert_eq!(
            Preferences::default().send(&shared).payload,
            Bytes::from_static(br#"{"type":"pong","time":8}"#)
        );
    }
}
