//! The hot paths, in process: encoding a message, handing one message to N hub
//! members, and storing a batch of events (SQLite on a temporary file, durable
//! commits: batches of one length, and of a different length each time, as the
//! writer's are). `cargo bench --bench hot_paths`; BENCHMARKS.md has the figures.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use maicivy_analytics::domain::{EventType, NewEvent, Stats, VisitorId};
use maicivy_analytics::hub::{Delivery, Hub};
use maicivy_analytics::ingest::Ingestor;
use maicivy_analytics::protocol;
use maicivy_analytics::store::{EventStore, SqliteStore};

fn event() -> NewEvent {
    let mut data = serde_json::Map::new();
    data.insert("letter_type".into(), "motivation".into());
    data.insert("t".into(), 1_733_683_200_123_456_789u64.into());
    NewEvent {
        // As the server makes them (src/http/api.rs): time-ordered, so that a
        // batch's ids go to the end of the primary key's index.
        id: uuid::Uuid::now_v7(),
        event_type: EventType::parse("letter_generate").unwrap(),
        visitor_id: VisitorId::parse("3f1c6a2e-8b4d-4c1e-9a7f-2d5e8c0b1a34").unwrap(),
        event_data: data,
        page_url: Some("/letters".into()),
        referrer: None,
        occurred_at: chrono::Utc::now(),
    }
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let e = event();
    g.bench_function("event", |b| b.iter(|| protocol::event(black_box(&e))));
    let stats = Stats {
        current_visitors: 12,
        unique_today: 145,
        total_events: 2340,
        letters_today: 23,
        timestamp: 1_733_683_200,
    };
    g.bench_function("heartbeat", |b| {
        b.iter(|| protocol::heartbeat(black_box(&stats)))
    });
    g.finish();
}

/// One broadcast, then every member takes it: the hub's share of one fan-out
/// (without the WebSocket write, which the load tool measures).
fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("hub_broadcast_one_to_n");
    let payload = protocol::event(&event());
    for n in [100usize, 1_000, 10_000] {
        let hub = Hub::new(4096);
        let mut members: Vec<_> = (0..n).map(|_| hub.join()).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                hub.broadcast(payload.clone());
                for m in &mut members {
                    match m.try_next() {
                        Some(Delivery::Message(bytes)) => {
                            black_box::<Bytes>(bytes);
                        }
                        other => panic!("expected the message, got {other:?}"),
                    }
                }
            })
        });
    }
    g.finish();
}

/// The group commit alone: nothing to count or publish after it.
struct Nothing;

#[async_trait::async_trait]
impl maicivy_analytics::ingest::AfterCommit for Nothing {
    async fn committed(&self, _: &[NewEvent]) {}
}

/// Storing events: one `insert_batch` of each size, and the group-commit writer
/// taking 256 concurrent events (what 256 concurrent POSTs cost the store).
fn ingestion(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store: Arc<SqliteStore> = Arc::new(rt.block_on(SqliteStore::connect(&url)).unwrap());
    let mut g = c.benchmark_group("sqlite_insert_batch");
    g.sample_size(20);
    for n in [1usize, 64, 1024] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            // Fresh events (fresh ids: the primary key) for every iteration.
            b.to_async(&rt).iter_batched(
                || (0..n).map(|_| event()).collect::<Vec<NewEvent>>(),
                |events| {
                    let store = Arc::clone(&store);
                    async move { store.insert_batch(&events).await.unwrap() }
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The writer's batches are as long as the requests that queued while the last
    // commit ran: a different length almost every time. Lengths 101, 103, … 299 in
    // turn (200 on average), so that a statement prepared for one length is not
    // simply reused by the next batch.
    g.throughput(Throughput::Elements(200));
    g.bench_function("varying_101_to_299", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = Arc::clone(&store);
            async move {
                let mut spent = std::time::Duration::ZERO;
                for i in 0..iters {
                    let n = 101 + 2 * (i % 100) as usize;
                    let events: Vec<NewEvent> = (0..n).map(|_| event()).collect();
                    let started = std::time::Instant::now();
                    store.insert_batch(&events).await.unwrap();
                    spent += started.elapsed();
                }
                spent
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ingest_group_commit");
    g.sample_size(20);
    let (ingestor, writer) = {
        let _guard = rt.enter();
        Ingestor::start(Arc::clone(&store) as Arc<dyn EventStore>, Arc::new(Nothing))
    };
    let n = 256u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("256_concurrent_events", |b| {
        b.to_async(&rt).iter_batched(
            || (0..n).map(|_| event()).collect::<Vec<_>>(),
            |events| {
                let ingestor = ingestor.clone();
                async move {
                    let stored = events.into_iter().map(|e| {
                        let ingestor = ingestor.clone();
                        async move { ingestor.store(e).await.unwrap() }
                    });
                    futures_util::future::join_all(stored).await
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    rt.block_on(writer.finish());
    rt.block_on(store.close());
}

criterion_group!(benches, encoding, fan_out, ingestion);
criterion_main!(benches);
