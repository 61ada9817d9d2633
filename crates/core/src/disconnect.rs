//! The ways a WebSocket session ends, as one type.
//!
//! A close code, its reason text, the metric label an operator graphs and the advice
//! a client author reads used to be four lists kept in step by hand (constants, a
//! metrics enum, the close frames, the README). Here each way a session ends is one
//! variant and the rest are its methods, so a new way to end cannot get a code without
//! a label or advice; `tests/tidy.rs` holds the README's close-code table to `ALL`.

use std::fmt;

/// One way a WebSocket session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disconnect {
    /// The client closed (its close frame is answered with its own code), or its TCP
    /// connection ended.
    ClientClosed,
    /// A write did not finish within `--write-timeout`: the client stopped reading
    /// and its buffers are full, so not even a close frame would reach it.
    StoppedReading,
    /// The client read too slowly and fell `--client-queue` messages behind.
    SlowConsumer,
    /// The token the connection was opened with expired (at `exp` plus the leeway).
    TokenExpired,
    /// Nothing came from the client, not even a pong to the server's pings, within
    /// `--ws-idle-timeout`.
    IdleTimeout,
    /// The server is stopping or restarting.
    GoingAway,
    /// The client broke the WebSocket protocol: a reserved opcode or bit, an unmasked
    /// or misfragmented frame, a malformed close frame, a compressed message that does
    /// not inflate.
    ProtocolError,
    /// A text message (or close reason) that is not valid UTF-8.
    InvalidPayload,
    /// The client kept sending faster than `--ws-messages-per-second` after being
    /// told so with `error` messages.
    RateLimited,
    /// A message over `--max-message-bytes`.
    MessageTooBig,
}

/// What a client should do after a [`Disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reconnect {
    /// The server will be back (or another instance is): reconnect after a delay.
    AfterDelay,
    /// The client missed events: reconnect asking for them.
    ResumeWithCursor,
    /// Reconnecting with the same token is refused.
    NewTokenFirst,
    /// The client's own behaviour ended the session; reconnecting unchanged repeats it.
    FixClientFirst,
    /// The path to the server failed.
    WhenNetworkIsBack,
}

impl Reconnect {
    /// The advice as the README's close-code table words it.
    pub const fn sentence(self) -> &'static str {
        match self {
            Self::AfterDelay => "reconnect after a short, jittered delay",
            Self::ResumeWithCursor => {
                "reconnect with `?resume=EPOCH:SEQ` to get the missed events still buffered, or refresh the figures"
            }
            Self::NewTokenFirst => "get a new token, then reconnect with it",
            Self::FixClientFirst => {
                "fix the client before reconnecting; do not resend the same message"
            }
            Self::WhenNetworkIsBack => "reconnect when the network is back",
        }
    }
}

impl fmt::Display for Reconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sentence())
    }
}

impl Disconnect {
    /// Every variant, in the order of the README's table.
    pub const ALL: [Self; 10] = [
        Self::ClientClosed,
        Self::StoppedReading,
        Self::SlowConsumer,
        Self::TokenExpired,
        Self::IdleTimeout,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidPayload,
        Self::RateLimited,
        Self::MessageTooBig,
    ];

    /// The code of the close frame the server sends; `None` when it sends none of its
    /// own (the client is gone, cannot read, or closed first and gets its code back).
    /// The 4000s are this server's (RFC 6455 7.4.2 leaves them to applications), the
    /// others RFC 6455's.
    pub const fn close_code(self) -> Option<u16> {
        match self {
            Self::ClientClosed | Self::StoppedReading => None,
            Self::SlowConsumer => Some(4000),
            Self::TokenExpired => Some(4001),
            Self::IdleTimeout => Some(4002),
            Self::GoingAway => Some(1001),
            Self::ProtocolError => Some(1002),
            Self::InvalidPayload => Some(1007),
            Self::RateLimited => Some(1008),
            Self::MessageTooBig => Some(1009),
        }
    }

    /// The reason text of the close frame, unless the session has a more precise one
    /// (yawc's wording of a protocol error). Empty when no frame is sent.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::ClientClosed | Self::StoppedReading => "",
            Self::SlowConsumer => "slow consumer: too many messages waiting",
            Self::TokenExpired => "token expired",
            Self::IdleTimeout => "idle: no answer to ping",
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "protocol error",
            Self::InvalidPayload => "text message that is not UTF-8",
            Self::RateLimited => "message rate limit exceeded",
            Self::MessageTooBig => "message over the size limit",
        }
    }

    /// The `reason` label of `maicivy_websocket_connections_closed_total`. Dashboards
    /// and alerts match these words, so two variants may share one (a client that
    /// stops reading is a slow consumer whatever the code) but none may change.
    pub const fn metric_label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client",
            Self::StoppedReading | Self::SlowConsumer => "slow_consumer",
            Self::TokenExpired => "token_expired",
            Self::IdleTimeout => "idle_timeout",
            Self::GoingAway => "shutdown",
            Self::ProtocolError | Self::InvalidPayload => "protocol_error",
            Self::RateLimited => "rate_limited",
            Self::MessageTooBig => "message_too_big",
        }
    }

    /// What the client should do next.
    pub const fn reconnect(self) -> Reconnect {
        match self {
            Self::ClientClosed | Self::IdleTimeout => Reconnect::WhenNetworkIsBack,
            Self::StoppedReading | Self::SlowConsumer => Reconnect::ResumeWithCursor,
            Self::TokenExpired => Reconnect::NewTokenFirst,
            Self::GoingAway => Reconnect::AfterDelay,
            Self::ProtocolError
            | Self::InvalidPayload
            | Self::RateLimited
            | Self::MessageTooBig => Reconnect::FixClientFirst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire and the metrics as clients and dashboards know them, written out
    /// rather than derived, so that changing a method fails here.
    #[test]
    fn codes_and_labels_are_the_published_ones() {
        let published = [
            (Disconnect::ClientClosed, None, "client"),
            (Disconnect::StoppedReading, None, "slow_consumer"),
            (Disconnect::SlowConsumer, Some(4000), "slow_consumer"),
            (Disconnect::TokenExpired, Some(4001), "token_expired"),
            (Disconnect::IdleTimeout, Some(4002), "idle_timeout"),
            (Disconnect::GoingAway, Some(1001), "shutdown"),
            (Disconnect::ProtocolError, Some(1002), "protocol_error"),
            (Disconnect::InvalidPayload, Some(1007), "protocol_error"),
            (Disconnect::RateLimited, Some(1008), "rate_limited"),
            (Disconnect::MessageTooBig, Some(1009), "message_too_big"),
        ];
        assert_eq!(published.len(), Disconnect::ALL.len());
        for (d, code, label) in published {
            assert!(Disconnect::ALL.contains(&d), "{d:?} missing from ALL");
            assert_eq!(d.close_code(), code, "{d:?}");
            assert_eq!(d.metric_label(), label, "{d:?}");
        }
    }

    #[test]
    fn a_close_frame_has_a_reason_that_fits_and_no_frame_has_none() {
        let mut codes = Vec::new();
        for d in Disconnect::ALL {
            match d.close_code() {
                Some(code) => {
                    assert!(!d.reason().is_empty(), "{d:?}");
                    // 125 bytes of payload, 2 of them the code.
                    assert!(d.reason().len() <= 123, "{d:?}");
                    codes.push(code);
                }
                None => assert!(d.reason().is_empty(), "{d:?}"),
            }
        }
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "two ways to end share a close code");
    }
}
