//! The protocol extensions against the real server: subscriptions, catch-up after a
//! reconnect, the Protocol Buffers subprotocol (decoded with the published `.proto`),
//! and permessage-deflate with independent clients (Node's `ws`, Chromium). And the
//! other side of each: a client that asks for none of it gets CONTRACT.md, byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, WAIT, WsClient, skip_or_fail, visitor};
use futures_util::SinkExt;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as PValue};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Reads messages until a heartbeat (always delivered); returns the types before it.
async fn types_until_heartbeat(c: &mut WsClient) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let v = c.next_json().await;
        let kind = v["type"].as_str().unwrap().to_owned();
        if kind == "heartbeat" {
            return seen;
        }
        seen.push(kind);
    }
}

async fn post(server: &TestServer, event_type: &str, who: &str) {
    let (status, body) = server
        .post_event(&json!({"event_type": event_type, "visitor_id": who, "page_url": format!("/{event_type}")}))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_client_that_asks_for_nothing_gets_the_contract_bytes() {
    let server = TestServer::start_default().await;
    let (ws, response) = tokio::time::timeout(WAIT, connect_async(server.ws_url()))
        .await
        .unwrap()
        .unwrap();
    // No subprotocol, no extension that was not asked for.
    assert!(response.headers().get("sec-websocket-protocol").is_none());
    assert!(response.headers().get("sec-websocket-extensions").is_none());
    let mut legacy = WsClient { ws };
    assert_eq!(legacy.next_json().await["type"], "initial_stats");
    // A payload as another publisher could send it: the exact bytes come out.
    let raw = r#"{"type":"custom_thing","visitor_id":"x","timestamp":"2025-12-08T12:34:56Z","data":{"price":1.50,"n":  2}}"#;
    server
        .analytics
        .hub
        .broadcast(Bytes::from_static(raw.as_bytes()));
    match legacy.next_message().await {
        Message::Text(t) => assert_eq!(t.as_str(), raw),
        other => panic!("expected text, got {other:?}"),
    }
    // An ingested event has exactly the contract's fields: no seq, no epoch.
    let who = visitor();
    post(&server, "page_view", &who).await;
    let ev = legacy.next_of_type("page_view").await;
    let mut keys: Vec<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["data", "page_url", "timestamp", "type", "visitor_id"]
    );
    server.stop().await;
}

#[tokio::test]
async fn filtered_clients_get_exactly_their_types_and_the_figures() {
    let server = TestServer::start_default().await;
    let (mut pages, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    pages
        .send_text(r#"{"type":"subscribe","events":["page_view"]}"#)
        .await;
    assert_eq!(
        pages.next_json().await,
        json!({"type": "subscribed", "events": ["page_view"]})
    );
    // The same through the URL, before any message could slip through.
    let (mut letters, _) = WsClient::connect_with_stats(&format!(
        "{}?events=letter_generate,pdf_download",
        server.ws_url()
    ))
    .await;
    let (mut everything, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    let (mut no_visitors, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    no_visitors
        .send_text(
            r#"{"type":"unsubscribe","events":["visitor_connected","visitor_disconnected"]}"#,
        )
        .await;
    assert_eq!(
        no_visitors.next_json().await,
        json!({"type": "subscribed", "events": ["*"], "except": ["visitor_connected", "visitor_disconnected"]})
    );

    let who = visitor();
    for kind in [
        "button_click",
        "page_view",
        "letter_generate",
        "pdf_download",
    ] {
        post(&server, kind, &who).await;
    }
    server.analytics.tick().await;

    assert_eq!(types_until_heartbeat(&mut pages).await, ["page_view"]);
    assert_eq!(
        types_until_heartbeat(&mut letters).await,
        ["letter_generate", "pdf_download"]
    );
    assert_eq!(
        types_until_heartbeat(&mut everything).await,
        [
            "button_click",
            "visitor_connected",
            "page_view",
            "letter_generate",
            "pdf_download"
        ]
    );
    assert_eq!(
        types_until_heartbeat(&mut no_visitors).await,
        [
            "button_click",
            "page_view",
            "letter_generate",
            "pdf_download"
        ]
    );

    // Unsubscribing from the last type leaves only the figures; a bad name is refused
    // with a sentence and changes nothing.
    pages
        .send_text(r#"{"type":"subscribe","events":["Not A Type"]}"#)
        .await;
    let err = pages.next_json().await;
    assert_eq!(err["type"], "error");
    assert!(err["error"].as_str().unwrap().ends_with('.'), "{err}");
    pages
        .send_text(r#"{"type":"unsubscribe","events":["page_view"]}"#)
        .await;
    assert_eq!(
        pages.next_json().await,
        json!({"type": "subscribed", "events": []})
    );
    post(&server, "page_view", &who).await;
    server.analytics.tick().await;
    assert!(types_until_heartbeat(&mut pages).await.is_empty());
    // Replies to the client itself are not filtered.
    pages.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(pages.next_json().await["type"], "pong");
    server.stop().await;
}

/// Connects with `?resume…`; returns the client and the `resumed`/`resume_failed` reply.
async fn connect_resuming(server: &TestServer, query: &str) -> (WsClient, Value) {
    let (mut c, _) = WsClient::connect_with_stats(&format!("{}?{query}", server.ws_url())).await;
    let answer = c.next_json().await;
    (c, answer)
}

#[tokio::test]
async fn a_client_that_drops_gets_what_it_missed_in_order() {
    let server = TestServer::start_default().await;
    let (mut c, answer) = connect_resuming(&server, "resume").await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    let epoch = answer["epoch"].as_str().unwrap().to_owned();
    let who = visitor();
    post(&server, "page_view", &who).await;
    let first = c.next_of_type("page_view").await;
    assert!(first["seq"].is_u64(), "numbered events carry seq: {first}");
    // The visitor's arrival follows their first event; it is numbered too.
    let arrival = c.next_of_type("visitor_connected").await;
    let last_seq = arrival["seq"].as_u64().unwrap();
    assert_eq!(last_seq, first["seq"].as_u64().unwrap() + 1);
    drop(c);

    // Missed while away: five events.
    let missed = ["a_1", "a_2", "a_3", "a_4", "a_5"];
    for kind in missed {
        post(&server, kind, &who).await;
    }
    let (mut c, answer) = connect_resuming(&server, &format!("resume={epoch}:{last_seq}")).await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(answer["epoch"], epoch.as_str());
    assert_eq!(answer["last_seq"], last_seq);
    let replayed = answer["replayed"].as_u64().unwrap();
    let mut got = Vec::new();
    for _ in 0..replayed {
        got.push(c.next_json().await);
    }
    let kinds: Vec<&str> = got.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, missed, "all of them, in order");
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (last_seq + 1..=last_seq + missed.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "consecutive numbers after the last one seen"
    );
    assert_eq!(got[2]["page_url"], "/a_3");
    // Then live service, numbered on.
    post(&server, "after", &who).await;
    let live = c.next_of_type("after").await;
    assert_eq!(live["seq"], last_seq + missed.len() as u64 + 1);

    // The same by message, on a connection that did not ask in its URL.
    let (mut m, _) = WsClient::connect_with_stats(&server.ws_url()).await;
    m.send_text(&json!({"type": "resume", "epoch": epoch, "last_seq": last_seq + 2}).to_string())
        .await;
    let answer = m.next_json().await;
    assert_eq!(answer["type"], "resumed", "{answer}");
    assert_eq!(answer["replayed"], 4);
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(m.next_json().await["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(rest, ["a_3", "a_4", "a_5", "after"]);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_comes_back_too_late_is_told_so() {
    // The replay buffer keeps max(--client-queue, 1024) events: 1024 here.
    let server = TestServer::with(&["--heartbeat-interval", "60s", "--client-queue", "64"]).await;
    // Another epoch: a restart, or another instance.
    let (mut c, answer) = connect_resuming(&server, "resume=0123456789abcdef:12").await;
    assert_eq!(answer["type"], "resume_failed", "{answer}");
    let sentence = answer["error"].as_str().unwrap();
    assert!(
        sentence.contains("restarted") && sentence.ends_with('.'),
        "{sentence}"
    );
    // Normal service goes on, numbered.
    post(&server, "page_view", &visitor()).await;
    let ev = c.next_of_type("page_view").await;
    assert!(ev["seq"].is_u64());
    let epoch = answer["epoch"].as_str().unwrap().to_owned();
    let last_seq = ev["seq"].as_u64().unwrap();
    drop(c);

    // Away while more events than the buffer keeps went by.
    for i in 0..1100 {
        server
            .analytics
            .hub
            .broadcast(Bytes::from(format!(r#"{{"type":"bulk","n":{i}}}"#)));
    }
    let (mut c, answer) = connect_resuming(&server, &format!("resume={epoch}:{last_seq}")).await;
    assert_eq!(answer["type"], "resume_failed", "{answer}");
    let sentence = answer["error"].as_str().unwrap();
    assert!(sentence.contains("no longer kept"), "{sentence}");
    assert_eq!(answer["epoch"], epoch.as_str());
    let now = answer["last_seq"].as_u64().unwrap();
    assert!(now >= last_seq + 1100, "the current position: {answer}");
    post(&server, "page_view", &visitor()).await;
    assert_eq!(c.next_of_type("page_view").await["seq"], now + 1);
    server.stop().await;
}

fn descriptors() -> DescriptorPool {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let set = protox::compile([dir.join("maicivy_analytics.proto")], [&dir])
        .expect("the published .proto compiles");
    DescriptorPool::from_file_descriptor_set(set).unwrap()
}

fn message(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(&format!("maicivy.analytics.v1.{name}"))
        .unwrap_or_else(|| panic!("{name} is in the .proto"))
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> std::borrow::Cow<'a, PValue> {
    m.get_field_by_name(name)
        .unwrap_or_else(|| panic!("field {name}"))
}

async fn next_binary(c: &mut WsClient, desc: &MessageDescriptor) -> DynamicMessage {
    match c.next_message().await {
        Message::Binary(b) => DynamicMessage::decode(desc.clone(), &b[..]).expect("decodes"),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_protobuf_session_decodes_with_the_published_proto() {
    let pool = descriptors();
    let server_msg = message(&pool, "ServerMessage");
    let server = TestServer::start_default().await;
    let mut request = server.ws_url().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "maicivy.v1.json, maicivy.v1.proto".parse().unwrap(),
    );
    let (ws, response) = tokio::time::timeout(WAIT, connect_async(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "maicivy.v1.proto"
    );
    let mut c = WsClient { ws };
    let initial = next_binary(&mut c, &server_msg).await;
    assert_eq!(field(&initial, "type").as_str(), Some("initial_stats"));
    assert!(initial.has_field_by_name("stats"));
    assert!(
        !initial.has_field_by_name("seq"),
        "figures are not numbered"
    );

    // A ClientMessage built from the .proto: subscribe to two types.
    let mut types = DynamicMessage::new(message(&pool, "EventTypes"));
    types.set_field_by_name(
        "events",
        PValue::List(vec![
            PValue::String("letter_generate".into()),
            PValue::String("page_view".into()),
        ]),
    );
    let mut sub = DynamicMessage::new(message(&pool, "ClientMessage"));
    sub.set_field_by_name("subscribe", PValue::Message(types));
    c.ws.send(Message::Binary(sub.encode_to_vec().into()))
        .await
        .unwrap();
    let reply = next_binary(&mut c, &server_msg).await;
    assert_eq!(field(&reply, "type").as_str(), Some("subscribed"));
    let subscribed = field(&reply, "subscribed");
    let events = field(subscribed.as_message().unwrap(), "events").into_owned();
    let events: Vec<&str> = events
        .as_list()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(events, ["letter_generate", "page_view"]);

    let who = visitor();
    let (status, _) = server
        .post_event(&json!({
            "event_type": "letter_generate",
            "event_data": {"letter_type": "motivation", "n": 3},
            "page_url": "/letters",
            "visitor_id": who,
        }))
        .await;
    assert_eq!(status, 201);
    let ev = next_binary(&mut c, &server_msg).await;
    assert_eq!(field(&ev, "type").as_str(), Some("letter_generate"));
    assert!(field(&ev, "seq").as_u64().unwrap() >= 1);
    let body = field(&ev, "event");
    let body = body.as_message().unwrap();
    assert_eq!(field(body, "visitor_id").as_str(), Some(who.as_str()));
    assert_eq!(field(body, "page_url").as_str(), Some("/letters"));
    let data: Value = serde_json::from_str(field(body, "data_json").as_str().unwrap()).unwrap();
    assert_eq!(data, json!({"letter_type": "motivation", "n": 3}));
    let ts = field(body, "timestamp");
    assert!(ts.as_str().unwrap().ends_with('Z'));

    // JSON text is understood too; the answer stays binary.
    c.send_text(r#"{"type":"ping"}"#).await;
    let pong = next_binary(&mut c, &server_msg).await;
    assert_eq!(field(&pong, "type").as_str(), Some("pong"));
    let p = field(&pong, "pong");
    assert!(field(p.as_message().unwrap(), "time").as_i64().unwrap() > 1_700_000_000);
    server.stop().await;
}

/// The e2e directory when node and `ws` (and Chromium, if asked) are there.
fn node_available(with_chromium: bool) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return skip_or_fail(
            "node",
            "`node` is not on PATH (apt-get install -y nodejs npm)",
        )
        .map(|()| dir);
    }
    for module in ["ws", "playwright-core"] {
        if !dir
            .join(format!("node_modules/{module}/package.json"))
            .exists()
        {
            return skip_or_fail(
                module,
                "e2e/node_modules is incomplete (npm ci --prefix e2e)",
            )
            .map(|()| dir);
        }
    }
    if with_chromium {
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        if !Path::new(&chromium).exists() {
            return skip_or_fail("chromium", &format!("{chromium} is missing")).map(|()| dir);
        }
    }
    Some(dir)
}

/// Runs `node e2e/ARGS…`; returns its standard output once it has exited 0.
async fn run_node(dir: &Path, args: &[&str]) -> String {
    // One browser at a time: the machine has two cores.
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = ONE.lock().await;
    let run = tokio::process::Command::new("node")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the node script ends in time")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `node e2e/deflate.mjs MODE BASE` and returns its `RESULT` line.
async fn run_deflate_script(dir: &Path, mode: &str, base: &str) -> Value {
    let stdout = run_node(dir, &["deflate.mjs", mode, base]).await;
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn deflate_with_node_ws_same_payloads_fewer_bytes() {
    let Some(dir) = node_available(false) else {
        return;
    };
    let server = TestServer::start_default().await;
    let r = run_deflate_script(&dir, "ws", &server.url("")).await;
    println!("{r:#}");
    let ext = r["extensions"].as_str().unwrap();
    assert!(ext.contains("permessage-deflate"), "{ext}");
    assert!(ext.contains("server_no_context_takeover"), "{ext}");
    assert_eq!(r["plain_extensions"], "", "deflate only when offered");
    assert_eq!(r["large_deflate"], r["large_plain"], "the same payload");
    let large: Value = serde_json::from_str(r["large_plain"].as_str().unwrap()).unwrap();
    assert_eq!(large["data"]["items"].as_array().unwrap().len(), 60);
    let (zipped, plain) = (
        r["large_wire_deflate"].as_u64().unwrap(),
        r["large_wire_plain"].as_u64().unwrap(),
    );
    assert!(zipped * 2 < plain, "compressed {zipped} bytes vs {plain}");
    // Under the threshold: sent as is, the same bytes on the wire.
    assert_eq!(r["small_deflate"], r["small_plain"]);
    assert_eq!(r["small_wire_deflate"], r["small_wire_plain"]);
    server.stop().await;
}

#[tokio::test]
async fn deflate_with_chromium() {
    let Some(dir) = node_available(true) else {
        return;
    };
    let server = TestServer::start_default().await;
    let r = run_deflate_script(&dir, "chromium", &server.url("")).await;
    let ext = r["extensions"].as_str().unwrap_or_default();
    assert!(
        ext.contains("permessage-deflate"),
        "Chromium negotiated {r}"
    );
    let large: Value = serde_json::from_str(r["large"].as_str().unwrap()).unwrap();
    assert_eq!(large["data"], r["sent_event_data"]);
    server.stop().await;
}

#[tokio::test]
async fn client_js_catches_up_after_a_lost_connection() {
    let Some(dir) = node_available(true) else {
        return;
    };
    let server = TestServer::start_default().await;
    let out = run_node(&dir, &["catchup.mjs", &server.url("/")]).await;
    println!("{out}");
    assert!(out.contains("PASS catchup"), "{out}");
    server.stop().await;
}
