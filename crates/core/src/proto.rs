//! The binary protocol: the messages of `proto/maicivy_analytics.proto` as Rust types,
//! generated at build time by `prost-build` (with `protox`, so no `protoc`) from the
//! published file itself: the two cannot drift.
//!
//! The server's messages are built from the typed `protocol::ServerMessage`
//! (`ServerMessage::to_proto`), once per broadcast by `Envelope::proto`; only a foreign
//! payload that arrived as bytes on the shared Redis channel is read from its JSON,
//! once, when a protobuf client first needs it.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/maicivy.analytics.v1.rs"));

impl From<crate::domain::Stats> for Stats {
    fn from(s: crate::domain::Stats) -> Self {
        Self {
            current_visitors: s.current_visitors,
            unique_today: s.unique_today,
            total_events: s.total_events,
            letters_today: s.letters_today,
            timestamp: s.timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

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
