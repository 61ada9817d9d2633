//! The Protocol Buffers encoding of server messages, built from the generated
//! types of `proto`: `ServerMessage::to_proto`, and `foreign_to_proto` for a
//! payload another publisher put on the channel.

use bytes::Bytes;
use prost::Message as _;

use super::ServerMessage;
use crate::proto;

impl ServerMessage {
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
