//! Admission: the places a new connection takes, under the open-file limit and the
//! per-IP cap on HTTP connections, or its refusal written at once.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Serving;
use super::rewrite::raw_answer;
use crate::http::ApiError;
use crate::http::limits::{ConnectionPermit, SocketPermit};

impl Serving {
    /// The places a new connection takes, or its refusal written and `None`.
    pub(super) fn admit(
        &self,
        stream: &TcpStream,
        peer: SocketAddr,
    ) -> Option<(SocketPermit, ConnectionPermit)> {
        let ip = peer.ip().to_canonical();
        let Some(socket) = self.sockets.acquire(self.exempt.contains(&ip)) else {
            self.metrics.request_refused("http_connections_instance");
            refuse(
                stream,
                &ApiError::Unavailable(
                    "This server has reached its connection limit; retry later.",
                ),
            );
            return None;
        };
        match self.per_ip.acquire(ip) {
            Ok(permit) => Some((socket, permit)),
            Err(_) => {
                self.metrics.request_refused("http_connections_per_ip");
                refuse(
                    stream,
                    &ApiError::TooManyRequests {
                        message: "Too many connections from your address; close one before opening another.".into(),
                        retry_after: 5,
                    },
                );
                None
            }
        }
    }
}

/// Answers a connection refused at its accept and closes it, without waiting: the
/// answer goes into the socket's buffer or not at all. Reading the request first
/// would let a flood hold what the refusal is meant to free.
fn refuse(stream: &TcpStream, error: &ApiError) {
    let answer = raw_answer(error.status(), &error.to_string(), "retry-after: 5\r\n");
    let _ = stream.try_write(&answer);
}
