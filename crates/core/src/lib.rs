//! The core of maicivy-analytics: the values every layer shares, the WebSocket
//! protocol, and the fan-out hub. It knows nothing of HTTP, WebSocket libraries,
//! Redis or SQL: this crate does not depend on axum, yawc, redis or sqlx, so that
//! the compiler keeps it so.
//!
//! # Layout
//!
//! - `domain`: `EventType`, `VisitorId`, `NewEvent`, `StoredEvent`, `Stats`, each
//!   with a `parse` that refuses bad input at the edge.
//! - `event_body`: the ingestion body parsed and validated, with no I/O (fuzzed).
//! - `protocol`: the WebSocket messages of CONTRACT.md, encoded once into `Bytes`.
//! - `disconnect`: the ways a session ends, each with its close code, reason, metric
//!   label and advice to the client.
//! - `proto`: the Protocol Buffers messages of `proto/maicivy_analytics.proto`.
//! - `envelope`: what the hub carries: the bytes, the kind read once, the sequence
//!   number, other encodings built once on first need.
//! - `replay`: the stream's epoch and numbering, its last events for catch-up.
//! - `hub`: the bounded broadcast ring every local connection reads.
//! - `subscriptions`: per-connection event-type filters.
//! - `period`, `visitor`: calendar periods in a time zone; the cookieless id.

pub mod disconnect;
pub mod domain;
pub mod envelope;
pub mod event_body;
pub mod hub;
pub mod period;
pub mod proto;
pub mod protocol;
pub mod replay;
pub mod subscriptions;
pub mod visitor;
