//! How a WebSocket session ends on the wire: which close frame (RFC 6455's codes for
//! what the client did wrong), and a close that reaches the client.
//!
//! Dropping a socket while the client is still sending makes the kernel answer the
//! unread bytes with a TCP reset, which throws away the close frame still on its way
//! (and fails the client's pending writes: Chromium then reports 1006 whatever the
//! frame said). So a closing session writes its close frame, half-closes (FIN), and
//! reads and discards whatever the client still sends until the client closes its side
//! or `LINGER` runs out; only then is the socket dropped. (The answer to the client's
//! own close frame needs no such wait: a client sends nothing after its close frame.)
//!
//! The discarding is done on the bytes, below yawc: after a frame header over the limit
//! yawc has consumed the header but not the payload, so its parser would read payload
//! bytes as frame headers. It ends at the client's end of stream rather than at its
//! close frame for the same reason (frame boundaries are lost), which costs nothing:
//! the FIN sent with our close frame is what makes clients close their side (RFC 6455
//! 7.1.1: the client waits for the server to close the connection).
//!
//! The bytes are reached with yawc's `split_stream` once the session is over (see the
//! SAFETY note in `finish`). The other way, wrapping the upgraded stream in a type that
//! can be switched to discarding, would need hyper as a direct dependency (yawc builds
//! the socket from hyper's stream itself) and would cost every idle connection the
//! wrapper's state; this costs the idle connections nothing.

use std::borrow::Cow;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use yawc::{HttpWebSocket, WebSocketError};

use crate::disconnect::Disconnect;

/// How long a closing session keeps reading what the client still sends once its close
/// frame is written. A client that received the close frame finishes the frame it is
/// sending and closes within a round trip or two; this bounds the wait for one that
/// never does (gone, or ignoring the close), and stays well under the stop's grace
/// period for close frames (`CLOSE_GRACE`, 5 s), so that a stop still waits for every
/// close frame to leave.
const LINGER: Duration = Duration::from_secs(2);

/// Reads of a drain start this small: at a stop every connection drains at once, and
/// almost all have nothing to send.
const SMALL_DRAIN_READ: usize = 128;
/// ...and grow to this for a client that is in the middle of a large message, so that
/// discarding megabytes does not take a system call per 128 bytes.
const LARGE_DRAIN_READ: usize = 16 * 1024;
/// The longest reason a close frame can carry (125 bytes of payload, 2 of them the code).
const MAX_REASON: usize = 123;

/// How one session ended. The code of a close frame the server starts, its default
/// reason and the metric label all come from the `Disconnect`; only what differs
/// between sessions ending the same way is kept here.
#[derive(Debug)]
pub(super) struct Ending {
    pub how: Disconnect,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    /// `how`'s own frame, if it has a code.
    Default,
    /// `how`'s code with a more precise reason (yawc's wording of the violation).
    Reason(Cow<'static, str>),
    /// The answer to the client's close frame, with the client's code (none when its
    /// frame had none), as RFC 6455 5.5.1 asks.
    Echo(Option<u16>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CloseFrame {
    /// `None`: a close frame without a code (the answer to one without a code).
    code: Option<u16>,
    reason: Cow<'static, str>,
    /// Whether the client may still be sending: the server closes first.
    drain: bool,
}

impl Ending {
    /// With `how`'s close frame, or none when `how` has no code: nothing can be
    /// written to that client any more.
    pub fn new(how: Disconnect) -> Self {
        Self {
            how,
            detail: Detail::Default,
        }
    }

    fn with_reason(how: Disconnect, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            how,
            detail: Detail::Reason(reason.into()),
        }
    }

    /// The client sent a close frame (`payload`, already checked by yawc).
    pub fn answer(payload: &[u8]) -> Self {
        Self {
            how: Disconnect::ClientClosed,
            detail: Detail::Echo(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]))),
        }
    }

    /// The close frame owed to the client, if any.
    pub fn into_frame(self) -> Option<CloseFrame> {
        let reason = match self.detail {
            Detail::Echo(code) => {
                return Some(CloseFrame {
                    code,
                    reason: Cow::Borrowed(""),
                    // RFC 6455 5.5.1: nothing comes after the client's close frame, so
                    // the socket can go as soon as the answer is written, and the
                    // connection's place is free again at once.
                    drain: false,
                });
            }
            Detail::Reason(reason) => reason,
            Detail::Default => Cow::Borrowed(self.how.reason()),
        };
        self.how.close_code().map(|code| CloseFrame {
            code: Some(code),
            reason,
            drain: true,
        })
    }

    /// Reading the client's next frame failed: the close that RFC 6455 asks for.
    ///
    /// yawc picks codes of its own (1003 for a reserved opcode, none at all for text
    /// that is not UTF-8); the frame it queued is never sent, since `finish` writes
    /// below it.
    pub fn read_failed(e: &WebSocketError) -> Self {
        match e {
            // The client closed its side or the connection broke: nobody to tell.
            WebSocketError::ConnectionClosed => Self::new(Disconnect::ClientClosed),
            // yawc reports a compressed payload that does not inflate as an
            // `InvalidInput` I/O error; reading a socket never fails that way.
            WebSocketError::IoError(io) if io.kind() == std::io::ErrorKind::InvalidInput => {
                Self::with_reason(
                    Disconnect::ProtocolError,
                    "the compressed message does not inflate",
                )
            }
            WebSocketError::IoError(_) => Self::new(Disconnect::ClientClosed),
            WebSocketError::FrameTooLarge => Self::new(Disconnect::MessageTooBig),
            WebSocketError::InvalidUTF8 => Self::new(Disconnect::InvalidPayload),
            // Reserved opcodes and bits, unmasked or misfragmented frames, bad close
            // frames: all protocol errors to RFC 6455 (7.4.1), yawc's wording as reason.
            other => Self::with_reason(Disconnect::ProtocolError, other.to_string()),
        }
    }
}

impl CloseFrame {
    /// The frame as a server sends it: FIN, opcode 8, unmasked.
    fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(2 + MAX_REASON);
        if let Some(code) = self.code {
            payload.extend_from_slice(&code.to_be_bytes());
            let mut end = self.reason.len().min(MAX_REASON);
            while !self.reason.is_char_boundary(end) {
                end -= 1;
            }
            payload.extend_from_slice(&self.reason.as_bytes()[..end]);
        }
        let mut frame = Vec::with_capacity(2 + payload.len());
        frame.push(0x88);
        frame.push(u8::try_from(payload.len()).expect("at most 125 bytes"));
        frame.extend_from_slice(&payload);
        frame
    }
}

/// Writes `frame` and a FIN while discarding what the client still sends, until the
/// client closes its side or `LINGER` runs out (just the writing, for an answer to the
/// client's close); then drops the socket.
pub(super) async fn finish(ws: HttpWebSocket, frame: CloseFrame) {
    // SAFETY: `split_stream` is `unsafe` for a protocol reason, not a memory one: its
    // parts share the connection's state, so their user must keep to one reader and
    // one writer and write whole frames. yawc's halves are dropped unused here, and
    // what is written below is whole frames, after the bytes yawc had encoded.
    let (framed, _read_half, _write_half) = unsafe { ws.split_stream() };
    // What yawc encoded but did not write yet (say, half a pong) goes first, so that
    // the close frame starts on a frame boundary; what it read and did not parse is
    // part of what is discarded. Frames yawc still meant to send (its own close frame,
    // with its own code) are dropped with it.
    let parts = framed.into_parts();
    let mut out = parts.write_buf.to_vec();
    out.extend_from_slice(&frame.encode());
    let _ = tokio::time::timeout(LINGER, send_and_drain(parts.io, &out, frame.drain)).await;
}

async fn send_and_drain<S: AsyncRead + AsyncWrite>(io: S, out: &[u8], drain: bool) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let send = async move {
        wr.write_all(out).await?;
        // Flushes, then half-closes: the client sees the end right after the close
        // frame, while its bytes can still come in.
        wr.shutdown().await
    };
    let discard = async move {
        if !drain {
            return;
        }
        let mut small = [0u8; SMALL_DRAIN_READ];
        let mut large = Vec::new();
        loop {
            let buf = if large.is_empty() {
                &mut small[..]
            } else {
                &mut large[..]
            };
            match rd.read(buf).await {
                // The client's end of stream; or its reset, after which there is
                // nothing left to protect.
                Ok(0) | Err(_) => return,
                Ok(n) if n == SMALL_DRAIN_READ && large.is_empty() => {
                    large = vec![0; LARGE_DRAIN_READ];
                }
                Ok(_) => {}
            }
        }
    };
    // A failed write ends nothing: what matters then is not to reset what the client
    // may still be reading.
    let _ = tokio::join!(send, discard);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_are_encoded_as_a_server_sends_them() {
        let f = Ending::with_reason(Disconnect::MessageTooBig, "too big")
            .into_frame()
            .unwrap();
        assert_eq!(f.encode(), b"\x88\x09\x03\xf1too big");
        let f = Ending::new(Disconnect::GoingAway).into_frame().unwrap();
        assert_eq!(f.encode(), b"\x88\x16\x03\xe9server shutting down");
        assert_eq!(
            Ending::answer(b"").into_frame().unwrap().encode(),
            b"\x88\x00"
        );
        assert_eq!(
            Ending::answer(b"\x03\xe8bye")
                .into_frame()
                .unwrap()
                .encode(),
            b"\x88\x02\x03\xe8"
        );
        // A long reason is cut at a character boundary to fit in 125 bytes.
        let long = CloseFrame {
            code: Some(1002),
            reason: Cow::Owned("é".repeat(100)),
            drain: true,
        };
        let bytes = long.encode();
        assert_eq!(usize::from(bytes[1]), bytes.len() - 2);
        assert!(bytes.len() - 2 <= 125);
        assert!(std::str::from_utf8(&bytes[4..]).is_ok());
    }

    #[test]
    fn every_way_to_end_writes_its_own_code_or_nothing() {
        for how in Disconnect::ALL {
            let frame = Ending::new(how).into_frame();
            assert_eq!(
                frame.as_ref().and_then(|f| f.code),
                how.close_code(),
                "{how:?}"
            );
            // Only the answer to the client's own close frame goes without a drain.
            assert!(frame.is_none_or(|f| f.drain), "{how:?}");
        }
    }

    #[test]
    fn read_errors_get_rfc_6455_codes() {
        let code = |e: WebSocketError| {
            let ending = Ending::read_failed(&e);
            let how = ending.how;
            (how, ending.into_frame().and_then(|f| f.code))
        };
        use Disconnect::*;
        assert_eq!(
            code(WebSocketError::FrameTooLarge),
            (MessageTooBig, Some(1009))
        );
        assert_eq!(
            code(WebSocketError::InvalidUTF8),
            (InvalidPayload, Some(1007))
        );
        // yawc itself would say 1003 (unsupported data), which is for a data type the
        // endpoint does not accept, not a reserved opcode.
        assert_eq!(
            code(WebSocketError::InvalidOpCode(3)),
            (ProtocolError, Some(1002))
        );
        assert_eq!(
            code(WebSocketError::ReservedBitsNotZero),
            (ProtocolError, Some(1002))
        );
        assert_eq!(code(WebSocketError::ConnectionClosed), (ClientClosed, None));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(code(WebSocketError::IoError(reset)), (ClientClosed, None));
        let corrupt = std::io::Error::new(std::io::ErrorKind::InvalidInput, "corrupt deflate");
        assert_eq!(
            code(WebSocketError::IoError(corrupt)),
            (ProtocolError, Some(1002))
        );
    }
}
