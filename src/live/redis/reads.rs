//! How the figures are read: each answer checked, so that a key of the wrong type
//! fails the read rather than reading as zero, and Go's fallbacks to maicivy's
//! tables.

use std::sync::atomic::Ordering;

use ::redis::Value;
use chrono::{DateTime, Utc};

use super::commands::{Batch, query};
use super::{LiveError, RedisLive};

impl RedisLive {
    /// Runs a read batch; every answer is checked, so that a key of the wrong type
    /// fails the read instead of reading as zero.
    pub(super) async fn read(
        &self,
        now: DateTime<Utc>,
        b: &Batch,
    ) -> Result<Vec<Value>, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let values = match query::<Vec<Value>>(&self.con, &b.pipe).await {
            Ok(v) => v,
            Err(e) => return Err(self.failed(&e)),
        };
        let answers = self.shared.verify(&self.con, &self.addr, b, values).await;
        self.recheck(now).await;
        match answers.error {
            Some(e) => Err(e),
            None => Ok(answers.values),
        }
    }

    /// Go's fallbacks for a period that began at `from`: maicivy's `visitors` rows
    /// when Redis counts no unique visitor, its `generated_letters` rows when it
    /// counts no letter. Best effort, as in Go: a failing store leaves Redis's 0.
    pub(super) async fn with_fallbacks(
        &self,
        from: DateTime<Utc>,
        unique: u64,
        letters: u64,
    ) -> (u64, u64) {
        let unique = if unique == 0 {
            match self.store.maicivy_visitors_since(from).await {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count maicivy's visitors for the fallback");
                    0
                }
            }
        } else {
            unique
        };
        let letters = if letters == 0 {
            match self.store.maicivy_letters_since(from).await {
                Ok(n) => n.unwrap_or(0),
                Err(e) => {
                    tracing::warn!(error = %e, "could not count maicivy's letters for the fallback");
                    0
                }
            }
        } else {
            letters
        };
        (unique, letters)
    }
}
