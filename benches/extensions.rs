//! The protocol extensions' hot paths, in process, beside the plain fan-out:
//! - one broadcast taken by 1,000 members, rendered for each by its `Preferences`:
//!   plain JSON (the contract), half of them filtering the message out, JSON with
//!   `seq`, Protocol Buffers. Any encoding is built once per broadcast, so the per-member
//!   cost should barely move;
//! - what permessage-deflate costs per delivery: yawc compresses each message once per
//!   connection that negotiated deflate (level 1, raw deflate, no context takeover),
//!   which is what this measures for a typical and a large event.
//!
//! `cargo bench --bench extensions`; the README's protocol extensions have the figures.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flate2::{Compress, Compression, FlushCompress};
use maicivy_analytics::domain::{EventType, NewEvent, VisitorId};
use maicivy_analytics::http::handshake::Format;
use maicivy_analytics::http::session::Preferences;
use maicivy_analytics::hub::{Delivery, Hub};
use maicivy_analytics::protocol;
use maicivy_analytics::subscriptions::Filter;

fn event(items: usize) -> NewEvent {
    let mut data = serde_json::Map::new();
    data.insert("letter_type".into(), "motivation".into());
    data.insert("t".into(), 1_733_683_200_123_456_789u64.into());
    if items > 0 {
        let list: Vec<serde_json::Value> = (0..items)
            .map(|i| serde_json::json!({"sku": format!("sku-{}", i % 7), "name": "Motivation letter", "qty": i % 3, "price": 19.9}))
            .collect();
        data.insert("items".into(), list.into());
    }
    NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: EventType::parse("letter_generate").unwrap(),
        visitor_id: VisitorId::parse("3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34").unwrap(),
        event_data: data,
        page_url: Some("/letters".into()),
        referrer: None,
        occurred_at: chrono::Utc::now(),
    }
}

fn preferences(variant: &str, i: usize) -> Preferences {
    match variant {
        "plain_json" => Preferences::default(),
        // Every other member wants only page views: the letter is filtered out for them.
        "filtered_half" if i.is_multiple_of(2) => Preferences {
            filter: Filter::from_query("page_view,pdf_download").unwrap(),
            ..Default::default()
        },
        "filtered_half" => Preferences::default(),
        "json_with_seq" => Preferences {
            numbered: true,
            ..Default::default()
        },
        "protobuf" => Preferences {
            format: Format::Proto,
            ..Default::default()
        },
        _ => unreachable!(),
    }
}

fn fan_out(c: &mut Criterion) {
    let n = 1_000usize;
    let mut g = c.benchmark_group("fanout_1000_members");
    g.throughput(Throughput::Elements(n as u64));
    let payload = protocol::event(&event(0));
    for variant in ["plain_json", "filtered_half", "json_with_seq", "protobuf"] {
        let hub = Hub::new(4096);
        let mut members: Vec<_> = (0..n)
            .map(|i| (hub.join(), preferences(variant, i)))
            .collect();
        g.bench_function(variant, |b| {
            b.iter(|| {
                hub.broadcast(payload.clone());
                for (m, prefs) in &mut members {
                    match m.try_next_envelope() {
                        Some(Delivery::Message(e)) => {
                            black_box(prefs.broadcast(&e));
                        }
                        other => panic!("expected the message, got {other:?}"),
                    }
                }
            })
        });
    }
    g.finish();
}

/// One permessage-deflate compression as yawc does it per connection and message.
fn deflate_once(compress: &mut Compress, out: &mut Vec<u8>, input: &[u8]) -> usize {
    out.clear();
    compress
        .compress_vec(input, out, FlushCompress::Sync)
        .unwrap();
    compress.reset();
    // RFC 7692: the trailing 00 00 ff ff of the sync flush is not sent.
    out.len() - 4
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate_per_delivery");
    for (name, items) in [("event_typical", 0usize), ("event_large", 60)] {
        let payload = protocol::event(&event(items));
        let mut compress = Compress::new(Compression::fast(), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        let size = deflate_once(&mut compress, &mut out, &payload);
        eprintln!(
            "deflate {name}: {} bytes -> {size} bytes ({:.0}% of the original)",
            payload.len(),
            100.0 * size as f64 / payload.len() as f64
        );
        g.throughput(Throughput::Bytes(payload.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), &payload, |b, p| {
            b.iter(|| deflate_once(&mut compress, &mut out, black_box(p)))
        });
    }
    g.finish();
}

criterion_group!(benches, fan_out, deflate);
criterion_main!(benches);
