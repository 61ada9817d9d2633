//! `maicivy-bench`: the load generator of maicivy-analytics (BENCHMARKS.md shows it at
//! work).
//!
//! It opens many WebSocket clients against a running server, checks each got its
//! `initial_stats`, injects events over HTTP at a given rate, each carrying its send
//! time (`{"t":<unix nanos>}`), and measures how long each took to reach every client.
//! With `--ingest-only` it only POSTs events, as fast as `--http-concurrency`
//! requests in flight allow, to measure ingestion.
//!
//! It shares the machine's cores with the server, so it is built to be cheap:
//! - one thread (a current-thread runtime and a `LocalSet`), so the shared counters
//!   are plain `RefCell`s and no lock is ever taken;
//! - yawc as the WebSocket client (already the server's WebSocket crate): its read
//!   buffer is set to 1 KiB per connection, it hands frames over as `Bytes` without
//!   copying and, unlike tungstenite, does not validate the UTF-8 of every text frame
//!   nor allocate 128 KiB read buffers per connection;
//! - no JSON parse of received messages: a message is classified by its first bytes
//!   (the server always writes `{"type":…` first), and the send time of an event is
//!   found by a byte search for `"t":`;
//! - a minimal HTTP/1.1 client for the POSTs (keep-alive, one request in flight per
//!   connection), instead of a general-purpose client with its pool and its task.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use yawc::{OpCode, Options, WebSocket};

/// Load generator for maicivy-analytics: N WebSocket clients, events injected over
/// HTTP, delivery ratio and send-to-receipt latency; or HTTP ingestion at full speed.
///
/// Prints a readable table, then one JSON line with every figure.
///
/// Examples:
///
///   maicivy-bench --clients 10000 --rate 20 --duration 10s --server-pid $PID
///
///   maicivy-bench --ingest-only --http-concurrency 128 --duration 10s
#[derive(Debug, Clone, Parser)]
#[command(name = "maicivy-bench", version, verbatim_doc_comment)]
struct Args {
    /// The server's WebSocket URL; its `IP:PORT` also serves the HTTP routes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws/analytics")]
    url: String,

    /// WebSocket clients to open (one process holds at most its open-file limit,
    /// 20,000 here: run several processes for more).
    #[arg(long, default_value_t = 100)]
    clients: usize,

    /// Loopback source addresses to spread the clients over (127.0.0.1, 127.0.0.2, …),
    /// each bound before connecting: every address has its own ephemeral ports.
    #[arg(long, default_value_t = 4)]
    sources: u8,

    /// The first source address; a second process can start at 127.0.0.11.
    #[arg(long, default_value = "127.0.0.1")]
    first_source: Ipv4Addr,

    /// Handshakes in flight at once; `--connect-concurrency` equal to `--clients`
    /// connects every client at once.
    #[arg(long, default_value_t = 500)]
    connect_concurrency: usize,

    /// How long one client may take to connect and receive `initial_stats`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    connect_timeout: Duration,

    /// Idle time after every client connected, before the memory is read.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    settle: Duration,

    /// Events per second to POST while the clients listen (0: none, the clients
    /// only listen for `--duration`, e.g. to count heartbeats).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,

    /// How long to inject events (or, with `--rate 0`, to listen).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// After the last event, how long to wait at most for the deliveries still due.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    drain: Duration,

    /// Share of the clients (0 to 1) that read their `initial_stats` and then never
    /// read again: slow consumers.
    #[arg(long, default_value_t = 0.0)]
    slow_share: f64,

    /// HTTP connections that POST the events (one request in flight on each).
    /// (A loaded server answers slowly: too few connections cannot hold `--rate`.)
    #[arg(long, default_value_t = 16)]
    http_concurrency: usize,

    /// Only POST events, as fast as `--http-concurrency` allows, for `--duration`;
    /// no WebSocket clients. Reports events/s acknowledged.
    #[arg(long)]
    ingest_only: bool,

    /// The event type of the injected events.
    #[arg(long, default_value = "bench_event")]
    event_type: String,

    /// Inject the events straight into Redis (PUBLISH on `--channel`, the way
    /// maicivy's Go backend does) instead of POSTing them: for a server in Redis mode.
    /// Measures the Pub/Sub path alone, without HTTP ingestion and storage.
    #[arg(long)]
    redis_url: Option<String>,

    /// The Redis Pub/Sub channel the server listens on (with `--redis-url`).
    #[arg(long, default_value = "analytics:realtime")]
    channel: String,

    /// The server's process id: report its resident memory per connected client
    /// and its CPU time per delivery (from /proc/PID/status and /proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
}

/// Exit code when the run could not be done as asked (limits, unreachable server).
const EXIT_USAGE: u8 = 2;
/// Exit code when the run was done but clients failed or deliveries were missing.
const EXIT_INCOMPLETE: u8 = 1;
/// Files the tool needs besides its WebSocket clients (HTTP, stdio, epoll, …).
const FD_MARGIN: u64 = 64;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("maicivy-bench: {e}");
        return std::process::ExitCode::from(EXIT_USAGE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(args)) {
        Ok(complete) if complete => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(EXIT_INCOMPLETE),
        Err(e) => {
            eprintln!("maicivy-bench: {e}");
            std::process::ExitCode::from(EXIT_USAGE)
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if args.redis_url.is_some() && args.ingest_only {
        return Err(
            "--ingest-only measures HTTP ingestion; it cannot be combined with --redis-url.".into(),
        );
    }
    if !(0.0..=1.0).contains(&args.slow_share) {
        return Err("--slow-share is a share between 0 and 1.".into());
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        return Err("--rate is a number of events per second, 0 or more.".into());
    }
    if args.sources == 0 || u32::from(args.first_source.octets()[3]) + u32::from(args.sources) > 256
    {
        return Err(
            "--sources must be 1 or more, and stay within the last octet of --first-source.".into(),
        );
    }
    if args.http_concurrency == 0 || args.connect_concurrency == 0 {
        return Err("--http-concurrency and --connect-concurrency must be 1 or more.".into());
    }
    // Every client is an open file: take the hard limit, and say so if it is too low.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let clients = if args.ingest_only {
        0
    } else {
        args.clients as u64
    };
    let need = clients + args.http_concurrency as u64 + FD_MARGIN;
    if need > limit {
        let per_process = limit.saturating_sub(args.http_concurrency as u64 + FD_MARGIN);
        return Err(format!(
            "{} clients need about {need} open files, but this process may hold at most {limit} \
             (its hard open-file limit, `ulimit -Hn`). One process holds at most {per_process} \
             clients: run several maicivy-bench processes, each with --clients {per_process} or \
             fewer and its own --first-source (127.0.0.1, 127.0.0.11, …), and only one of them \
             with --rate; or raise the hard limit.",
            args.clients
        ));
    }
    Ok(())
}

/// `IP:PORT` of `ws://IP:PORT/path`, and the path.
fn parse_ws_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url must start with ws:// (got {url:?})"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let addr = authority
        .parse()
        .map_err(|_| format!("--url must name the server by IP:PORT (got {authority:?})"))?;
    Ok((addr, path))
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds, from 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

// ---------------------------------------------------------------------------------
// What the clients share (one thread: `RefCell`, no locks).

#[derive(Default)]
struct Tally {
    /// Events received by reading clients, and their send-to-receipt latency (µs).
    deliveries: u64,
    latency: Option<Histogram<u64>>,
    /// The latest receipt of an event, Unix nanos.
    last_delivery: u64,
    heartbeats: u64,
    /// Clients that received at least one heartbeat.
    clients_with_heartbeat: u64,
    other_messages: u64,
    /// Reading clients whose connection ended during the run, by close code
    /// (0: no close frame, the connection just ended).
    closed: BTreeMap<u16, u64>,
}

type Shared = Rc<RefCell<Tally>>;

/// How one client's connection went.
enum Connected {
    Ok { micros: u64, slow: bool },
    Failed(&'static str),
}

/// The fixed parts of every client's connection.
struct ClientPlan {
    server: SocketAddr,
    url: String,
    event_prefix: Vec<u8>,
    connect_timeout: Duration,
}

async fn open_client(
    plan: &ClientPlan,
    source: Option<IpAddr>,
) -> Result<WebSocket<TcpStream>, &'static str> {
    let socket = TcpSocket::new_v4().map_err(|_| "socket")?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|_| "bind (no free port on the source address)")?;
    }
    let stream = socket
        .connect(plan.server)
        .await
        .map_err(|_| "tcp connect")?;
    let options = Options::default()
        .with_read_buffer_capacity(1024)
        .with_write_buffer_capacity(256);
    let url = plan.url.parse().map_err(|_| "url")?;
    WebSocket::handshake(url, stream, options)
        .await
        .map_err(|_| "websocket handshake")
}

/// Connects, waits for `initial_stats`, reports, then reads (or, for a slow client,
/// holds the connection without reading) until `stop`.
async fn client(
    plan: Rc<ClientPlan>,
    source: Option<IpAddr>,
    slow: bool,
    permits: Rc<Semaphore>,
    done: mpsc::UnboundedSender<Connected>,
    shared: Shared,
    stop: CancellationToken,
) {
    let permit = permits
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let started = Instant::now();
    let connecting = async {
        let mut ws = open_client(&plan, source).await?;
        let frame = ws
            .next_frame()
            .await
            .map_err(|_| "closed before initial_stats")?;
        if frame.opcode() == OpCode::Text
            && frame.payload().starts_with(b"{\"type\":\"initial_stats\"")
        {
            Ok(ws)
        } else {
            Err("first message not initial_stats")
        }
    };
    let ws = match tokio::time::timeout(plan.connect_timeout, connecting).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(why)) => {
            let _ = done.send(Connected::Failed(why));
            return;
        }
        Err(_) => {
            let _ = done.send(Connected::Failed("timeout"));
            return;
        }
    };
    let micros = started.elapsed().as_micros() as u64;
    drop(permit);
    let _ = done.send(Connected::Ok { micros, slow });
    drop(done);
    if slow {
        // Connected, never reading: the server's queue and socket buffers fill up.
        stop.cancelled().await;
        drop(ws);
        return;
    }
    read_until(ws, &plan.event_prefix, &shared, stop).await;
}

async fn read_until(
    mut ws: WebSocket<TcpStream>,
    event_prefix: &[u8],
    shared: &Shared,
    stop: CancellationToken,
) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut had_heartbeat = false;
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut stopped => return,
            f = ws.next_frame() => f,
        };
        let Ok(frame) = frame else {
            *shared.borrow_mut().closed.entry(0).or_default() += 1;
            return;
        };
        match frame.opcode() {
            OpCode::Text => {}
            OpCode::Close => {
                let code = frame.close_code().map_or(0, u16::from);
                *shared.borrow_mut().closed.entry(code).or_default() += 1;
                return;
            }
            _ => continue,
        }
        let payload = frame.payload();
        let mut tally = shared.borrow_mut();
        if payload.starts_with(event_prefix) {
            if let Some(sent) = send_time(payload) {
                let now = unix_nanos();
                let micros = now.saturating_sub(sent) / 1000;
                tally.deliveries += 1;
                tally.last_delivery = tally.last_delivery.max(now);
                if let Some(h) = tally.latency.as_mut() {
                    h.saturating_record(micros.max(1));
                }
            } else {
                tally.other_messages += 1;
            }
        } else if payload.starts_with(b"{\"type\":\"heartbeat\"") {
            tally.heartbeats += 1;
            if !had_heartbeat {
                had_heartbeat = true;
                tally.clients_with_heartbeat += 1;
            }
        } else {
            tally.other_messages += 1;
        }
    }
}

/// The `t` of `"data":{"t":123…}`, found by byte search, without parsing the JSON.
fn send_time(payload: &Bytes) -> Option<u64> {
    const KEY: &[u8] = b"\"t\":";
    let at = payload.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = &payload[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------
// A minimal HTTP/1.1 client: keep-alive, one request in flight.

struct HttpConn {
    server: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

/// The status of an answer, and where its body lies in the connection's buffer.
struct Answer {
    status: u16,
    body: std::ops::Range<usize>,
}

impl HttpConn {
    fn new(server: SocketAddr) -> Self {
        Self {
            server,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request; on a kept-alive connection the server closed meanwhile,
    /// reconnects once and resends.
    async fn request(&mut self, request: &[u8]) -> io::Result<Answer> {
        let reused = self.stream.is_some();
        match self.try_request(request).await {
            Err(e) if reused && e.kind() == io::ErrorKind::UnexpectedEof => {
                self.stream = None;
                self.try_request(request).await
            }
            other => other,
        }
    }

    async fn try_request(&mut self, request: &[u8]) -> io::Result<Answer> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.server).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let result = roundtrip(stream, &mut self.buf, request).await;
        match result {
            Ok((answer, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(answer)
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn body(&self, answer: &Answer) -> &[u8] {
        &self.buf[answer.body.clone()]
    }
}

async fn roundtrip(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> io::Result<(Answer, bool)> {
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| io::ErrorKind::InvalidData)?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(io::ErrorKind::InvalidData)?;
    let mut length = 0usize;
    let mut keep_alive = true;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| io::ErrorKind::InvalidData)?;
        } else if name.eq_ignore_ascii_case("connection")
            && value.trim().eq_ignore_ascii_case("close")
        {
            keep_alive = false;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Every route used here answers with a length.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunked answer"));
        }
    }
    while buf.len() < head_end + length {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok((
        Answer {
            status,
            body: head_end..head_end + length,
        },
        keep_alive,
    ))
}

fn post_event(server: SocketAddr, event_type: &str, visitor: &str, sent: u64) -> Vec<u8> {
    let body = format!(
        "{{\"event_type\":\"{event_type}\",\"visitor_id\":\"{visitor}\",\"event_data\":{{\"t\":{sent}}}}}"
    );
    format!(
        "POST /api/v1/analytics/event HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The event message of CONTRACT.md, as a publisher on the channel sends it.
fn published_event(event_type: &str, visitor: &str, sent: u64) -> String {
    let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    format!(
        "{{\"type\":\"{event_type}\",\"visitor_id\":\"{visitor}\",\"timestamp\":\"{at}\",\"data\":{{\"t\":{sent}}}}}"
    )
}

async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())
}

/// The `maicivy_*` samples of `/metrics` (empty if it cannot be read).
async fn server_metrics(server: SocketAddr) -> BTreeMap<String, f64> {
    let mut conn = HttpConn::new(server);
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    let Ok(Ok(answer)) =
        tokio::time::timeout(Duration::from_secs(5), conn.request(request.as_bytes())).await
    else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(conn.body(&answer))
        .lines()
        .filter(|l| l.starts_with("maicivy_"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Event injection.

#[derive(Default)]
struct Injected {
    sent: u64,
    acked: u64,
    /// Refused or failed POSTs, by status (0: no answer).
    failed: BTreeMap<u16, u64>,
    /// POST round trip, µs.
    ack_latency: Option<Histogram<u64>>,
    first_send: Option<u64>,
}

/// POSTs events: at `rate` per second for `duration` (tickets from a pacer), or, with
/// `rate` 0, back to back on every connection until `duration` is over.
async fn inject(args: &Args, server: SocketAddr, rate: f64) -> Injected {
    let injected = Rc::new(RefCell::new(Injected {
        ack_latency: Some(new_histogram()),
        ..Injected::default()
    }));
    let visitor = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + args.duration;
    // One multiplexed Redis connection shared by every sender, when injecting there.
    let redis = match &args.redis_url {
        Some(url) => match redis_connection(url).await {
            Ok(c) => Some((Rc::<str>::from(args.channel.as_str()), c)),
            Err(e) => {
                eprintln!("cannot inject into Redis at {url}: {e}");
                None
            }
        },
        None => None,
    };
    if args.redis_url.is_some() && redis.is_none() {
        return Injected::default();
    }
    let mut senders = Vec::new();
    let mut tickets = Vec::new();
    for _ in 0..args.http_concurrency {
        let (tx, mut rx) = mpsc::channel::<()>(1024);
        tickets.push(tx);
        let injected = Rc::clone(&injected);
        let event_type = args.event_type.clone();
        let visitor = visitor.clone();
        let redis = redis.clone();
        senders.push(tokio::task::spawn_local(async move {
            let mut conn = HttpConn::new(server);
            let mut redis = redis;
            loop {
                if rate > 0.0 {
                    if rx.recv().await.is_none() {
                        return;
                    }
                } else if Instant::now() >= deadline {
                    return;
                }
                let sent = unix_nanos();
                let started = Instant::now();
                let outcome = match redis.as_mut() {
                    // A PUBLISH counts as acknowledged like a 201.
                    Some((channel, r)) => redis::cmd("PUBLISH")
                        .arg(channel.as_ref())
                        .arg(published_event(&event_type, &visitor, sent))
                        .query_async::<i64>(r)
                        .await
                        .map(|_| Answer {
                            status: 201,
                            body: 0..0,
                        })
                        .map_err(|e| io::Error::other(e.to_string())),
                    None => {
                        let request = post_event(server, &event_type, &visitor, sent);
                        conn.request(&request).await
                    }
                };
                let micros = started.elapsed().as_micros() as u64;
                let unreachable = outcome.is_err();
                {
                    let mut inj = injected.borrow_mut();
                    inj.sent += 1;
                    inj.first_send.get_or_insert(sent);
                    match outcome {
                        Ok(a) if a.status == 201 => {
                            inj.acked += 1;
                            if let Some(h) = inj.ack_latency.as_mut() {
                                h.saturating_record(micros.max(1));
                            }
                        }
                        Ok(a) => *inj.failed.entry(a.status).or_default() += 1,
                        Err(_) => *inj.failed.entry(0).or_default() += 1,
                    }
                }
                if unreachable {
                    // The server is unreachable: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    if rate > 0.0 {
        let total = (rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
        let start = Instant::now();
        let mut issued = 0u64;
        let mut next = 0usize;
        while issued < total {
            let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while issued < due {
                // Round robin; a busy connection's queue simply grows.
                let _ = tickets[next].send(()).await;
                next = (next + 1) % tickets.len();
                issued += 1;
            }
            let next_due = start + Duration::from_secs_f64(issued as f64 / rate);
            tokio::time::sleep_until(next_due.into()).await;
        }
    }
    drop(tickets);
    for s in senders {
        let _ = s.await;
    }
    Rc::try_unwrap(injected)
        .ok()
        .expect("every sender has ended")
        .into_inner()
}

// ---------------------------------------------------------------------------------
// The server process, seen from /proc.

const CLOCK_TICKS_PER_SECOND: f64 = 100.0; // USER_HZ, 100 on every Linux build

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU time of the process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses;
    // utime and stime are fields 14 and 15, so 11 and 12 after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

// ---------------------------------------------------------------------------------
// The run.

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |micros: u64| (micros as f64 / 1000.0 * 1000.0).round() / 1000.0;
    if h.is_empty() {
        return serde_json::Value::Null;
    }
    json!({
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p99_9": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
    })
}

fn is_slow(i: usize, share: f64) -> bool {
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// Runs the benchmark and prints its report; `Ok(false)` when clients failed or
/// deliveries were missing.
async fn run(args: Args) -> Result<bool, String> {
    let (server, path) = parse_ws_url(&args.url)?;
    let pid = args.server_pid.map(|p| p.to_string());
    let metrics_before = server_metrics(server).await;
    if metrics_before.is_empty() {
        return Err(format!(
            "no answer from http://{server}/metrics: is the server running?"
        ));
    }
    let rss_before = args.server_pid.and_then(rss_bytes);
    let tool_cpu_start = cpu_seconds("self");
    let mut report = serde_json::Map::new();
    report.insert("url".into(), json!(args.url));
    let mut complete = true;

    if args.ingest_only {
        let cpu_before = pid.as_deref().and_then(cpu_seconds);
        let started = Instant::now();
        let inj = inject(&args, server, 0.0).await;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = pid
            .as_deref()
            .and_then(cpu_seconds)
            .zip(cpu_before)
            .map(|(a, b)| a - b);
        let per_s = inj.acked as f64 / seconds;
        println!(
            "ingestion over HTTP ({} connections, {:.1} s)",
            args.http_concurrency, seconds
        );
        println!("  events acknowledged (201)  {:>12}", inj.acked);
        println!(
            "  refused or failed          {:>12}  {:?}",
            inj.failed.values().sum::<u64>(),
            inj.failed
        );
        println!("  events per second          {:>12.0}", per_s);
        let ack = inj
            .ack_latency
            .as_ref()
            .map(percentiles)
            .unwrap_or_default();
        println!("  acknowledgement latency ms {ack}");
        if let Some(cpu) = cpu {
            println!(
                "  server CPU per event       {:>12.1} µs",
                cpu * 1e6 / inj.acked.max(1) as f64
            );
            report.insert(
                "server_cpu_us_per_event".into(),
                json!(cpu * 1e6 / inj.acked.max(1) as f64),
            );
        }
        report.insert("mode".into(), json!("ingest"));
        report.insert("http_concurrency".into(), json!(args.http_concurrency));
        report.insert("seconds".into(), json!(seconds));
        report.insert("events_acked".into(), json!(inj.acked));
        report.insert(
            "events_failed".into(),
            json!(inj.failed.values().sum::<u64>()),
        );
        report.insert("events_per_s".into(), json!(per_s));
        report.insert("ack_latency_ms".into(), ack);
        complete = inj.failed.is_empty();
    } else {
        complete &= fan_out(&args, server, path, pid.as_deref(), rss_before, &mut report).await;
    }

    let metrics_after = server_metrics(server).await;
    let delta = |name: &str| {
        let after = metrics_after.get(name).copied()?;
        Some(after - metrics_before.get(name).copied().unwrap_or(0.0))
    };
    let mut server_deltas = serde_json::Map::new();
    for name in [
        "maicivy_stats_computations_total",
        "maicivy_websocket_messages_sent_total",
        "maicivy_websocket_messages_dropped_total",
        "maicivy_websocket_connections_closed_total{reason=\"slow_consumer\"}",
        "maicivy_events_ingested_total",
    ] {
        if let Some(d) = delta(name) {
            server_deltas.insert(name.into(), json!(d));
        }
    }
    println!("server counters during the run (/metrics)");
    for (name, value) in &server_deltas {
        println!("  {name:<72} {value}");
    }
    report.insert(
        "server_metrics_delta".into(),
        serde_json::Value::Object(server_deltas),
    );
    if let Some((end, start)) = cpu_seconds("self").zip(tool_cpu_start) {
        report.insert("tool_cpu_s".into(), json!(end - start));
        println!("tool CPU time                {:>12.2} s", end - start);
    }
    report.insert("complete".into(), json!(complete));
    println!("{}", serde_json::Value::Object(report));
    Ok(complete)
}

/// The WebSocket run: connect, settle, inject (or listen), drain, report.
async fn fan_out(
    args: &Args,
    server: SocketAddr,
    path: String,
    pid: Option<&str>,
    rss_before: Option<u64>,
    report: &mut serde_json::Map<String, serde_json::Value>,
) -> bool {
    let mut complete = true;
    let plan = Rc::new(ClientPlan {
        server,
        url: format!("ws://{server}{path}"),
        event_prefix: format!("{{\"type\":\"{}\"", args.event_type).into_bytes(),
        connect_timeout: args.connect_timeout,
    });
    let shared: Shared = Rc::new(RefCell::new(Tally {
        latency: Some(new_histogram()),
        ..Tally::default()
    }));
    let stop = CancellationToken::new();
    let permits = Rc::new(Semaphore::new(args.connect_concurrency));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let loopback = server.ip().is_loopback();
    let first = args.first_source.octets();
    let mut slow_clients = 0usize;
    let started = Instant::now();
    for i in 0..args.clients {
        let source = loopback.then(|| {
            let last = first[3] as usize + i % args.sources as usize;
            IpAddr::V4(Ipv4Addr::new(first[0], first[1], first[2], last as u8))
        });
        let slow = is_slow(i, args.slow_share);
        slow_clients += usize::from(slow);
        tokio::task::spawn_local(client(
            Rc::clone(&plan),
            source,
            slow,
            Rc::clone(&permits),
            done_tx.clone(),
            Rc::clone(&shared),
            stop.clone(),
        ));
    }
    drop(done_tx);
    let mut connect_hist = new_histogram();
    let mut failures: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut last_connect = Duration::ZERO;
    let mut slow_connected = 0u64;
    while let Some(outcome) = done_rx.recv().await {
        match outcome {
            Connected::Ok { micros, slow } => {
                connect_hist.saturating_record(micros.max(1));
                slow_connected += u64::from(slow);
                last_connect = started.elapsed();
            }
            Connected::Failed(why) => *failures.entry(why).or_default() += 1,
        }
    }
    let connected = connect_hist.len();
    let connect_s = last_connect.as_secs_f64();
    let failed: u64 = failures.values().sum();
    complete &= failed == 0;
    println!(
        "connect: {connected} of {} clients got initial_stats in {connect_s:.2} s ({:.0}/s, {} at once), {failed} failed {failures:?}",
        args.clients,
        connected as f64 / connect_s.max(1e-9),
        args.connect_concurrency.min(args.clients),
    );
    println!(
        "  time to initial_stats ms   {}",
        percentiles(&connect_hist)
    );
    report.insert("mode".into(), json!("fan_out"));
    report.insert(
        "injected_via".into(),
        json!(if args.redis_url.is_some() {
            "redis"
        } else {
            "http"
        }),
    );
    report.insert("clients".into(), json!(args.clients));
    report.insert("connected".into(), json!(connected));
    report.insert("connect_failures".into(), json!(failed));
    report.insert("connect_failure_kinds".into(), json!(failures));
    report.insert("connect_seconds".into(), json!(connect_s));
    report.insert(
        "connect_rate_per_s".into(),
        json!(connected as f64 / connect_s.max(1e-9)),
    );
    report.insert("connect_latency_ms".into(), percentiles(&connect_hist));
    report.insert("slow_clients".into(), json!(slow_clients));

    tokio::time::sleep(args.settle).await;
    if let (Some(before), Some(idle)) = (rss_before, args.server_pid.and_then(rss_bytes)) {
        let per_client = idle.saturating_sub(before) as f64 / connected.max(1) as f64;
        println!(
            "server memory: {:.1} MiB before, {:.1} MiB with {connected} idle clients: {per_client:.0} bytes per client",
            before as f64 / 1048576.0,
            idle as f64 / 1048576.0
        );
        report.insert("server_rss_before_bytes".into(), json!(before));
        report.insert("server_rss_idle_bytes".into(), json!(idle));
        report.insert("server_rss_per_client_bytes".into(), json!(per_client));
    }

    // Clients closed before injection (none, normally) are not expected to receive.
    let reading = connected
        .saturating_sub(slow_connected)
        .saturating_sub(shared.borrow().closed.values().sum::<u64>());
    let cpu_before = pid.and_then(cpu_seconds);
    let phase = Instant::now();
    let inj = if args.rate > 0.0 {
        inject(args, server, args.rate).await
    } else {
        tokio::time::sleep(args.duration).await;
        Injected::default()
    };
    let expected = inj.acked * reading;
    let drain_until = Instant::now() + args.drain;
    while shared.borrow().deliveries < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let phase_s = phase.elapsed().as_secs_f64();
    let cpu = pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let rss_end = args.server_pid.and_then(rss_bytes);
    stop.cancel();

    let tally = shared.borrow();
    let latency = tally.latency.as_ref().map(percentiles).unwrap_or_default();
    let window_s = inj
        .first_send
        .map(|f| tally.last_delivery.saturating_sub(f) as f64 / 1e9)
        .filter(|s| *s > 0.0);
    let per_s = window_s.map_or(0.0, |s| tally.deliveries as f64 / s);
    let ratio = if expected == 0 {
        1.0
    } else {
        tally.deliveries as f64 / expected as f64
    };
    if args.rate > 0.0 {
        complete &= tally.deliveries == expected && inj.failed.is_empty();
        println!(
            "events: {} sent ({}), {} acknowledged, {} failed {:?}; at {:.1}/s to {reading} reading clients",
            inj.sent,
            if args.redis_url.is_some() {
                "PUBLISH on Redis"
            } else {
                "POST"
            },
            inj.acked,
            inj.failed.values().sum::<u64>(),
            inj.failed,
            args.rate
        );
        println!(
            "  deliveries                 {:>12} of {expected} ({:.5})",
            tally.deliveries, ratio
        );
        println!("  deliveries per second      {per_s:>12.0}");
        println!("  latency send→receipt ms    {latency}");
        let ack = inj
            .ack_latency
            .as_ref()
            .map(percentiles)
            .unwrap_or_default();
        println!("  POST acknowledgement ms    {ack}");
        report.insert("rate".into(), json!(args.rate));
        report.insert("events_sent".into(), json!(inj.sent));
        report.insert("events_acked".into(), json!(inj.acked));
        report.insert(
            "events_failed".into(),
            json!(inj.failed.values().sum::<u64>()),
        );
        report.insert("ack_latency_ms".into(), ack);
    }
    println!(
        "heartbeats: {} received; {} of {reading} reading clients got at least one",
        tally.heartbeats, tally.clients_with_heartbeat
    );
    if !tally.closed.is_empty() {
        println!(
            "  reading clients closed during the run, by close code: {:?}",
            tally.closed
        );
    }
    if let Some(cpu) = cpu {
        let per = if tally.deliveries > 0 {
            cpu * 1e6 / tally.deliveries as f64
        } else {
            0.0
        };
        println!("server CPU: {cpu:.2} s over {phase_s:.1} s; {per:.2} µs per delivery");
        report.insert("server_cpu_s".into(), json!(cpu));
        report.insert("server_cpu_us_per_delivery".into(), json!(per));
    }
    if let Some(rss) = rss_end {
        report.insert("server_rss_end_bytes".into(), json!(rss));
        println!(
            "server memory at the end: {:.1} MiB",
            rss as f64 / 1048576.0
        );
    }
    report.insert("reading_clients".into(), json!(reading));
    report.insert("expected_deliveries".into(), json!(expected));
    report.insert("deliveries".into(), json!(tally.deliveries));
    report.insert("delivery_ratio".into(), json!(ratio));
    report.insert("deliveries_per_s".into(), json!(per_s));
    report.insert("latency_ms".into(), latency);
    report.insert("heartbeats".into(), json!(tally.heartbeats));
    report.insert(
        "clients_with_heartbeat".into(),
        json!(tally.clients_with_heartbeat),
    );
    report.insert(
        "closed_during_run".into(),
        json!(
            tally
                .closed
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        ),
    );
    report.insert("phase_seconds".into(), json!(phase_s));
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_send_time() {
        let msg = Bytes::from_static(
            br#"{"type":"bench_event","visitor_id":"x","timestamp":"2025-01-01T00:00:00Z","data":{"t":1733683200123456789}}"#,
        );
        assert_eq!(send_time(&msg), Some(1733683200123456789));
        assert_eq!(
            send_time(&Bytes::from_static(br#"{"type":"x","data":{}}"#)),
            None
        );
    }

    #[test]
    fn slow_share_picks_that_share() {
        assert_eq!((0..1000).filter(|&i| is_slow(i, 0.1)).count(), 100);
        assert_eq!((0..10).filter(|&i| is_slow(i, 0.0)).count(), 0);
        assert_eq!((0..10).filter(|&i| is_slow(i, 1.0)).count(), 10);
    }

    #[test]
    fn parses_the_url() {
        let (addr, path) = parse_ws_url("ws://127.0.0.1:8080/ws/analytics").unwrap();
        assert_eq!(addr.port(), 8080);
        assert_eq!(path, "/ws/analytics");
        assert!(parse_ws_url("http://127.0.0.1:8080/").is_err());
    }
}
