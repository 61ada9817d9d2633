//! Unit tests of the ingestion pipeline, against a scripted store: a poison event
//! fails alone, a failing store is retryable, a caller that left still gets its
//! event committed and announced.

use std::sync::Mutex;

use chrono::Utc;

use super::*;
use crate::domain::{EventType, VisitorId};
use crate::store::{HeatCell, Letters, MinuteCount, PageNow, StoreError, Summary, ThemeViews};

/// A store that refuses any batch holding a `poison` event, and remembers what
/// it committed.
#[derive(Default)]
struct Picky {
    committed: Mutex<Vec<String>>,
    down: AtomicBool,
}

fn refused() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol("refused".into()))
}

#[async_trait]
impl EventStore for Picky {
    async fn insert_batch(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        if self.down.load(Ordering::Acquire)
            || events.iter().any(|e| e.event_type.as_str() == "poison")
        {
            return Err(refused());
        }
        let mut committed = self.committed.lock().unwrap();
        committed.extend(events.iter().map(|e| e.event_type.as_str().to_owned()));
        Ok(())
    }
    async fn timeline(
        &self,
        _: u32,
        _: u64,
    ) -> Result<Vec<crate::domain::StoredEvent>, StoreError> {
        unimplemented!()
    }
    async fn summary(
        &self,
        _: chrono::DateTime<Utc>,
        _: chrono::DateTime<Utc>,
    ) -> Result<Summary, StoreError> {
        unimplemented!()
    }
    async fn events_per_minute(
        &self,
        _: chrono::DateTime<Utc>,
        _: chrono::DateTime<Utc>,
    ) -> Result<Vec<MinuteCount>, StoreError> {
        unimplemented!()
    }
    async fn pages_since(
        &self,
        _: chrono::DateTime<Utc>,
        _: u32,
    ) -> Result<Vec<PageNow>, StoreError> {
        unimplemented!()
    }
    async fn visitors_since(
        &self,
        _: chrono::DateTime<Utc>,
    ) -> Result<Vec<(VisitorId, chrono::DateTime<Utc>)>, StoreError> {
        unimplemented!()
    }
    async fn daily_salt(&self, _: chrono::NaiveDate) -> Result<Vec<u8>, StoreError> {
        unimplemented!()
    }
    async fn top_themes(&self, _: u32) -> Result<Vec<ThemeViews>, StoreError> {
        unimplemented!()
    }
    async fn heatmap(
        &self,
        _: chrono::DateTime<Utc>,
        _: Option<&str>,
    ) -> Result<Vec<HeatCell>, StoreError> {
        unimplemented!()
    }
    async fn letters(
        &self,
        _: chrono::DateTime<Utc>,
        _: chrono::DateTime<Utc>,
        _: chrono_tz::Tz,
    ) -> Result<Letters, StoreError> {
        unimplemented!()
    }
    async fn maicivy_visitors_since(
        &self,
        _: chrono::DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        unimplemented!()
    }
    async fn maicivy_letters_since(
        &self,
        _: chrono::DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        unimplemented!()
    }
    async fn session_visitor(&self, _: &str) -> Result<Option<VisitorId>, StoreError> {
        unimplemented!()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn close(&self) {}
}

/// Records what was announced, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

#[async_trait]
impl AfterCommit for Log {
    async fn committed(&self, events: &[NewEvent]) {
        let mut log = self.0.lock().unwrap();
        log.extend(events.iter().map(|e| e.event_type.as_str().to_owned()));
    }
}

fn event(kind: &str) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::new_v4(),
        event_type: EventType::parse(kind).unwrap(),
        visitor_id: VisitorId::from_uuid(uuid::Uuid::new_v4()),
        event_data: Default::default(),
        page_url: None,
        referrer: None,
        occurred_at: Utc::now(),
    }
}

/// A pipeline over a `Picky` store whose announcements go to a `Log`.
fn pipeline() -> (Arc<Picky>, Arc<Log>, Ingestor, Writer) {
    let store = Arc::new(Picky::default());
    let log = Arc::new(Log::default());
    let (ingestor, writer) = Ingestor::start(store.clone(), log.clone());
    (store, log, ingestor, writer)
}

/// Sends `kinds` so that they land in one batch: all are queued before the
/// writer runs (a current-thread runtime runs nothing until we await).
async fn send_together(ingestor: &Ingestor, kinds: &[&str]) -> Vec<Result<(), IngestError>> {
    let calls: Vec<_> = kinds.iter().map(|k| ingestor.store(event(k))).collect();
    futures_util::future::join_all(calls).await
}

#[tokio::test]
async fn a_poison_event_fails_alone_and_for_good() {
    let (store, log, ingestor, writer) = pipeline();
    let answers = send_together(&ingestor, &["a", "poison", "b"]).await;
    assert_eq!(answers, vec![Ok(()), Err(IngestError::Rejected), Ok(())]);
    assert_eq!(*store.committed.lock().unwrap(), ["a", "b"]);
    assert_eq!(
        *log.0.lock().unwrap(),
        ["a", "b"],
        "announced in commit order"
    );
    assert!(ingestor.readiness().is_ok(), "the store works");
    writer.finish().await;
}

#[tokio::test]
async fn a_failing_store_is_retryable_and_reported_until_it_recovers() {
    let (store, log, ingestor, writer) = pipeline();
    store.down.store(true, Ordering::Release);
    let answers = send_together(&ingestor, &["a", "b"]).await;
    assert_eq!(answers, vec![Err(IngestError::StoreFailed); 2]);
    assert!(ingestor.readiness().is_err());
    assert!(
        log.0.lock().unwrap().is_empty(),
        "nothing uncommitted is announced"
    );
    store.down.store(false, Ordering::Release);
    assert_eq!(send_together(&ingestor, &["c"]).await, vec![Ok(())]);
    assert!(ingestor.readiness().is_ok());
    assert_eq!(*log.0.lock().unwrap(), ["c"]);
    writer.finish().await;
}

#[tokio::test]
async fn an_event_whose_caller_left_is_still_committed_and_announced() {
    let (store, log, ingestor, writer) = pipeline();
    // The caller queues its event and is dropped (its client hung up).
    let mut call = Box::pin(ingestor.store(event("left")));
    assert!(futures_util::poll!(&mut call).is_pending());
    drop(call);
    writer.finish().await;
    assert_eq!(*store.committed.lock().unwrap(), ["left"]);
    assert_eq!(*log.0.lock().unwrap(), ["left"]);
}
