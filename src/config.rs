//! The server's configuration: one typed struct, each field a flag and an
//! environment variable (CONTRACT.md fixes the first six).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// maicivy-analytics: a self-hosted real-time analytics hub.
#[derive(Debug, Clone, Parser)]
#[command(name = "maicivy-analytics", version, about, args_override_self = true)]
pub struct Config {
    /// Address and port to serve on.
    #[arg(long, env = "MAICIVY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Where events are stored: `sqlite://PATH` (created and migrated if missing),
    /// `sqlite::memory:`, or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://maicivy-analytics.db"
    )]
    pub database_url: String,

    /// Redis server to share figures and fan-out with other instances and with
    /// maicivy's Go backend. Without it, everything stays in this process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// How often every client gets a `heartbeat` with fresh figures (`5s`, `500ms`, …).
    #[arg(long, env = "MAICIVY_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// The Redis Pub/Sub channel of the Redis mode.
    #[arg(long, env = "MAICIVY_CHANNEL", default_value = "analytics:realtime")]
    pub channel: String,

    /// The time zone whose midnight starts the "today" figures (an IANA name).
    #[arg(long, env = "MAICIVY_TIMEZONE", default_value = "UTC")]
    pub timezone: chrono_tz::Tz,

    /// How many messages a WebSocket client may fall behind before it is closed
    /// as a slow consumer (close code 4000).
    #[arg(long, env = "MAICIVY_CLIENT_QUEUE", default_value_t = 4096)]
    pub client_queue: usize,

    /// Largest WebSocket message a client may send, in bytes (bigger: close 1009).
    #[arg(long, env = "MAICIVY_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,

    /// Largest event body accepted on ingestion, in bytes (bigger: 413).
    #[arg(long, env = "MAICIVY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// A write to a WebSocket client that blocks this long means the client stopped
    /// reading: the connection is dropped as a slow consumer.
    #[arg(long, env = "MAICIVY_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long a visitor counts as current after their last event or ping. The
    /// contract's figure is 5 minutes; tests shorten it.
    #[arg(long, env = "MAICIVY_ACTIVE_WINDOW", default_value = "5m", value_parser = parse_duration, hide = true)]
    pub active_window: Duration,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| format!("{e} (try 5s or 500ms)"))?;
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

impl Config {
    /// The configuration a test or an embedding program starts from: the defaults,
    /// with an in-memory database and an ephemeral port.
    pub fn for_tests() -> Self {
        Self::parse_from([
            "maicivy-analytics",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::parse_from(["maicivy-analytics"]);
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.channel, "analytics:realtime");
        assert_eq!(c.timezone, chrono_tz::UTC);
        assert!(c.redis_url.is_none());
        let c = Config::parse_from(["x", "--heartbeat-interval", "500ms"]);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert!(Config::try_parse_from(["x", "--heartbeat-interval", "0s"]).is_err());
        assert!(Config::try_parse_from(["x", "--timezone", "Mars/Olympus"]).is_err());
    }
}
