//! A connection's socket as hyper sees it: it tells the deadlines what moves, holds
//! the connection's place under the open-file limit, and swaps hyper's own
//! refusals for ours.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::deadlines::ConnState;
use super::rewrite::{hyper_refusal, with_sentence};
use crate::http::limits::SocketPermit;

/// A connection's socket: tells `ConnState` what moves, holds the connection's
/// place under the open-file limit for as long as the socket lives (through a
/// WebSocket upgrade), and gives hyper's own refusals their JSON sentence.
pub(super) struct ConnIo {
    pub(super) stream: TcpStream,
    /// `None` once the socket is a WebSocket session's: the deadlines no longer
    /// apply, the watcher has gone, and idle sessions by the thousand need not keep
    /// the state alive.
    pub(super) state: Option<Arc<ConnState>>,
    pub(super) _socket: SocketPermit,
    /// Our version of hyper's refusal, and how much of it is written.
    pub(super) rewritten: Option<(Vec<u8>, usize)>,
}

impl ConnIo {
    /// The connection's HTTP state, until it is upgraded.
    fn http_state(&mut self) -> Option<&ConnState> {
        if self.state.as_ref().is_some_and(|s| s.upgraded()) {
            self.state = None;
        }
        self.state.as_deref()
    }

    fn poll_write_through(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.stream).poll_write(cx, buf) {
            Poll::Pending => {
                if let Some(state) = &self.state {
                    state.write_blocked();
                }
                Poll::Pending
            }
            Poll::Ready(Ok(n)) => {
                if let Some(state) = &self.state {
                    state.wrote();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = self.rewritten.take() {
            match self.poll_write_through(cx, &bytes[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) if written + n < bytes.len() => {
                    self.rewritten = Some((bytes, written + n));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.rewritten = Some((bytes, written));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before
            && let Some(state) = this.http_state()
        {
            state.read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(state) = this.http_state() else {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        };
        let between_requests = state.between_requests();
        ready!(this.poll_rewritten(cx))?;
        if between_requests && let Some((at, len)) = hyper_refusal(buf) {
            if at > 0 {
                // What comes before it first (the end of an earlier answer).
                return this.poll_write_through(cx, &buf[..at]);
            }
            this.rewritten = Some((with_sentence(&buf[..len]), 0));
            // Hyper's bytes are taken; ours leave now, or at the flush.
            if let Poll::Ready(Err(e)) = this.poll_rewritten(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(len));
        }
        this.poll_write_through(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.http_state().is_none() {
            return Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        }
        let buf = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, buf)
    }

    fn is_write_vectored(&self) -> bool {
        self.state.as_ref().is_none_or(|s| s.upgraded()) && self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_rewritten(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}
