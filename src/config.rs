//! The server's configuration: one typed struct, each field a flag and an
//! environment variable (CONTRACT.md fixes the first six).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::Parser;
use secrecy::{ExposeSecret, SecretString};

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
    #[arg(long, env = "MAICIVY_CLIENT_QUEUE", default_value = "4096", value_parser = parse_client_queue)]
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

    // Security and abuse resistance: SECURITY.md explains each of these.
    /// HS256 secret: with it, the WebSocket and the read API need a valid JWT
    /// (`?token=` or `Authorization: Bearer`). Without it or `--jwt-public-key`,
    /// the feed is open.
    #[arg(long, env = "MAICIVY_JWT_SECRET", conflicts_with = "jwt_public_key")]
    pub jwt_secret: Option<SecretString>,

    /// PEM file of the RSA (RS256) or EC P-256 (ES256) public key that verifies JWTs.
    #[arg(long, env = "MAICIVY_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// When set, a token's `aud` claim must be this value.
    #[arg(long, env = "MAICIVY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// When set, a token's `iss` claim must be this value.
    #[arg(long, env = "MAICIVY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew tolerated on a token's `exp` (and `nbf`), at the handshake and
    /// while connected.
    #[arg(long, env = "MAICIVY_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration_or_zero)]
    pub jwt_leeway: Duration,

    /// Origins (`https://example.com`, comma-separated) whose pages may open the
    /// WebSocket and send events; others get 403. Empty: any origin.
    // `Set`, not a `Vec`'s default `Append`: a repeated flag replaces the list, as
    // every other flag does.
    #[arg(
        long,
        env = "MAICIVY_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = trimmed,
        action = clap::ArgAction::Set
    )]
    pub allowed_origins: Vec<String>,

    /// Reverse proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` is
    /// believed for the client IP. Empty: the socket's peer is the client.
    #[arg(long, env = "MAICIVY_TRUSTED_PROXIES", default_value = "", value_parser = parse_networks)]
    pub trusted_proxies: Networks,

    /// Client IPs (IPs or CIDRs) that the per-IP limits leave alone: the machine
    /// itself (operators, local load tests) by default. `""` limits everyone.
    #[arg(long, env = "MAICIVY_LIMITS_EXEMPT", default_value = "127.0.0.0/8,::1", value_parser = parse_networks)]
    pub limits_exempt: Networks,

    /// WebSocket connections this instance holds at most (more: 503).
    #[arg(long, env = "MAICIVY_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// WebSocket connections one client IP holds at most (more: 429).
    #[arg(long, env = "MAICIVY_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// Messages per second one WebSocket connection may send (more: an `error`
    /// message; persistent excess: close 1008).
    #[arg(long, env = "MAICIVY_WS_MESSAGES_PER_SECOND", default_value_t = NonZeroU32::new(10).expect("non-zero"))]
    pub ws_messages_per_second: NonZeroU32,

    /// Messages a WebSocket connection may send at once above its rate.
    #[arg(long, env = "MAICIVY_WS_MESSAGE_BURST", default_value_t = NonZeroU32::new(20).expect("non-zero"))]
    pub ws_message_burst: NonZeroU32,

    /// Events per second one client IP may send to the ingestion route (more: 429).
    #[arg(long, env = "MAICIVY_INGEST_EVENTS_PER_SECOND", default_value_t = NonZeroU32::new(20).expect("non-zero"))]
    pub ingest_events_per_second: NonZeroU32,

    /// Events one client IP may send at once above its rate.
    #[arg(long, env = "MAICIVY_INGEST_BURST", default_value_t = NonZeroU32::new(100).expect("non-zero"))]
    pub ingest_burst: NonZeroU32,

    /// How often the server sends a WebSocket ping frame to each client.
    #[arg(long, env = "MAICIVY_WS_PING_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// A client from which nothing (not even a pong) came for this long is closed
    /// (code 4002), checked at each ping.
    #[arg(long, env = "MAICIVY_WS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub ws_idle_timeout: Duration,

    /// An HTTP request whose headers have not all arrived this long after the
    /// connection opened (or after the first byte of a later request) is cut.
    #[arg(long, env = "MAICIVY_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// A request body that has not all arrived this long after its headers gets 408
    /// and the connection is closed.
    #[arg(long, env = "MAICIVY_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_body_timeout: Duration,

    /// A keep-alive HTTP connection with no request for this long is closed; so is
    /// one whose client stopped reading an answer for this long.
    #[arg(long, env = "MAICIVY_HTTP_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,

    /// HTTP connections (not yet WebSocket sessions) one client IP holds at most;
    /// more are answered 429 and closed at once. 0: no limit. `--limits-exempt` and
    /// `--trusted-proxies` are not limited.
    #[arg(
        long,
        env = "MAICIVY_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_http_connections_per_ip: usize,

    /// Serve `/metrics` on this separate address (e.g. `127.0.0.1:9090`) and not on
    /// `--listen`, so that it can stay private.
    #[arg(long, env = "MAICIVY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Delete raw events older than this (`90d`, at least 1d), in small batches in
    /// the background; the per-day figures are kept. Not set: keep every event.
    #[arg(long, env = "MAICIVY_RETENTION", value_parser = parse_retention)]
    pub retention: Option<Duration>,
}

/// `--retention`: days (`90d`) or any longer duration; at least a day, so that the
/// fold of maicivy's rows is always far ahead of it.
fn parse_retention(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| format!("{e} (try 90d)"))?;
    if d < Duration::from_secs(24 * 60 * 60) {
        return Err("at least 1 day (1d) is accepted".into());
    }
    if d > Duration::from_secs(100 * 365 * 24 * 60 * 60) {
        return Err("at most 100 years is accepted; leave it out to keep everything".into());
    }
    Ok(d)
}

/// The longest interval or timeout a flag accepts. Far beyond any sensible value,
/// and far below what would overflow a timer (`Instant + d` panics near the limits
/// of its range): refused at start with a sentence instead.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(raw)?;
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

fn parse_duration_or_zero(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| format!("{e} (try 5s or 500ms)"))?;
    if d > MAX_DURATION {
        return Err("at most 7 days (7d) is accepted".into());
    }
    Ok(d)
}

/// The most messages a client may fall behind: the hub's ring holds this many
/// messages for everyone, so a huge value would be memory, not patience.
const MAX_CLIENT_QUEUE: usize = 1 << 20;

fn parse_client_queue(raw: &str) -> Result<usize, String> {
    let n: usize = raw
        .parse()
        .map_err(|_| "a whole number of messages, such as 4096".to_owned())?;
    if !(1..=MAX_CLIENT_QUEUE).contains(&n) {
        return Err(format!("from 1 to {MAX_CLIENT_QUEUE} messages"));
    }
    Ok(n)
}

/// The JWT secret's value, if it is long enough to be one. Checked after parsing, not
/// by clap: clap's refusal repeats the value it refuses ("invalid value '…'"), which
/// would print the secret (from the flag or the environment) to the log.
pub fn checked_secret(secret: &SecretString) -> Result<&str, String> {
    let value = secret.expose_secret();
    // A short HMAC secret can be brute-forced offline from one token.
    if value.len() < 32 {
        return Err("the JWT secret must be at least 32 bytes long".into());
    }
    Ok(value)
}

/// One piece of a comma-separated list, as `"a, b"` was always written. Empty pieces
/// (`""`, a trailing comma) stay in the list for its user to skip: a value parser
/// cannot drop a value.
fn trimmed(piece: &str) -> Result<String, Infallible> {
    Ok(piece.trim().to_owned())
}

/// A comma-separated list of IP networks; a plain address is a network of one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Networks(pub Vec<ipnet::IpNet>);

impl Networks {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

/// Split here rather than with clap's `value_delimiter`, which needs a `Vec` field:
/// the limiters and the accept loop take a `Networks`.
fn parse_networks(raw: &str) -> Result<Networks, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    format!("{p:?} is neither an IP address nor a CIDR such as 10.0.0.0/8")
                })
        })
        .collect::<Result<_, _>>()
        .map(Networks)
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
        // Values that would overflow a timer or the ring are refused, not panics.
        for (flag, value) in [
            ("--heartbeat-interval", "1000000000years"),
            ("--ws-ping-interval", "100000d"),
            ("--ws-idle-timeout", "8d"),
            ("--client-queue", "18446744073709551615"),
            ("--client-queue", "0"),
        ] {
            let e = Config::try_parse_from(["x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("at most") || e.contains("from 1"),
                "{flag} {value}: {e}"
            );
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = "a-very-long-secret-that-nobody-may-see-0123456789";
        let c = Config::parse_from(["x", "--jwt-secret", secret]);
        assert!(!format!("{c:?}").contains(secret));
        assert!(!format!("{c:?}").contains("nobody-may-see"));
        let kept = c.jwt_secret.as_ref().expect("the secret is kept");
        assert_eq!(checked_secret(kept), Ok(secret));
        // Refused after parsing (see `checked_secret`), so clap never echoes it.
        let short = Config::parse_from(["x", "--jwt-secret", "short"]);
        let refusal = checked_secret(short.jwt_secret.as_ref().unwrap()).unwrap_err();
        assert!(refusal.contains("at least 32 bytes"), "{refusal}");
        assert!(!refusal.contains("short"), "{refusal}");
    }

    #[test]
    fn lists_and_networks_parse() {
        let c = Config::parse_from([
            "x",
            "--allowed-origins",
            "https://a.example, https://b.example,",
            "--trusted-proxies",
            "10.0.0.0/8,192.0.2.7,::1",
            "--limits-exempt",
            "",
        ]);
        let origins = |c: &Config| -> Vec<String> {
            c.allowed_origins
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect()
        };
        assert_eq!(origins(&c), ["https://a.example", "https://b.example"]);
        assert!(c.trusted_proxies.contains(&"10.1.2.3".parse().unwrap()));
        assert!(c.trusted_proxies.contains(&"192.0.2.7".parse().unwrap()));
        assert!(!c.trusted_proxies.contains(&"192.0.2.8".parse().unwrap()));
        assert!(c.limits_exempt.0.is_empty());
        let d = Config::parse_from(["x"]);
        assert!(origins(&d).is_empty());
        assert!(d.limits_exempt.contains(&"127.0.0.1".parse().unwrap()));
        assert!(Config::try_parse_from(["x", "--trusted-proxies", "proxy.local"]).is_err());
    }

    #[test]
    fn http_timeouts_and_the_per_ip_cap_have_their_documented_defaults() {
        let c = Config::parse_from(["x"]);
        assert_eq!(c.http_header_timeout, Duration::from_secs(10));
        assert_eq!(c.http_body_timeout, Duration::from_secs(10));
        assert_eq!(c.http_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_http_connections_per_ip, 64);
        assert!(Config::try_parse_from(["x", "--http-header-timeout", "0s"]).is_err());
        assert!(Config::try_parse_from(["x", "--http-idle-timeout", "100000d"]).is_err());
    }

    #[test]
    fn comma_lists_are_split_by_clap() {
        let c = Config::parse_from([
            "x",
            "--allowed-origins",
            "https://a.example,https://b.example",
        ]);
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        // Repeating the flag keeps the last one, as before (`args_override_self`).
        let c = Config::parse_from([
            "x",
            "--allowed-origins",
            "https://a.example",
            "--allowed-origins",
            "https://c.example",
        ]);
        assert_eq!(c.allowed_origins, ["https://c.example"]);
        // Empty: any origin, whatever spelling of empty.
        for empty in ["", ",", " , "] {
            let c = Config::parse_from(["x", "--allowed-origins", empty]);
            assert!(
                c.allowed_origins.iter().all(String::is_empty),
                "{empty:?}: {:?}",
                c.allowed_origins
            );
        }
    }
}
