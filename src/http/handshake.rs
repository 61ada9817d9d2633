//! The WebSocket handshake's negotiation: what a client asks for before the first
//! message, beyond CONTRACT.md.
//!
//! - a format, chosen by the WebSocket subprotocol: JSON (the default) or Protocol
//!   Buffers (`maicivy.v1.proto`, see `proto`);
//! - in the query of the URL, a subscription filter (`?events=a,b`) and catch-up
//!   (`?resume=EPOCH:SEQ`);
//! - permessage-deflate, negotiated by yawc when the client offers it.
//!
//! What the session then does with it is `session`'s.

use std::sync::LazyLock;

use axum::http::Uri;
use serde::Deserialize;
use yawc::{DeflatePool, Options};

use crate::protocol::Resume;
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

/// The answer to a binary frame from a client that did not ask for Protocol Buffers.
pub const BINARY_WITHOUT_PROTO: &str = "binary messages are only understood with the maicivy.v1.proto subprotocol; send JSON text such as {\"type\":\"ping\"}.";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
