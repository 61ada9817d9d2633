//! The commands that count one event or ping: Go's writes and our presence in one
//! MULTI/EXEC, and whether the visitor has just become active.

use std::sync::atomic::Ordering;

use ::redis::Value;

use super::answers::score;
use super::commands::{Batch, query};
use super::keys::{Key, PRESENCE_KEY, Scope};
use super::{LiveError, RedisLive, Update};
use crate::broker::is_transient;
use crate::period::local_day;

impl RedisLive {
    /// The commands of one update, as Go writes them (plus our presence).
    fn update_batch(&self, u: &Update) -> (Batch, usize) {
        let day = local_day(self.tz, u.at);
        let visitor = u.visitor.to_string();
        let mut b = Batch::atomic();
        b.active(std::slice::from_ref(&visitor), self.shared.window);
        let mut zscore = ::redis::cmd("ZSCORE");
        zscore.arg(PRESENCE_KEY).arg(&visitor);
        let seen = b.typed(zscore, &Key::presence());
        b.presence(
            &[(u.at.timestamp(), visitor.clone())],
            self.shared.presence_ttl,
        );
        for scope in Scope::ALL {
            b.count(scope, day, u.events, u.letters);
            b.unique(scope, day, std::slice::from_ref(&visitor));
        }
        if let Some(theme) = &u.theme {
            b.theme(theme, 1);
        }
        (b, seen)
    }

    /// Applies one update in one MULTI/EXEC; `true` when the visitor was not present
    /// before it. While Redis is unreachable the update waits in the backlog and no
    /// arrival is announced. A key of Go's of the wrong type is recorded (log, metric,
    /// `readiness()`) and does not stop the rest of the update, which Redis has
    /// applied anyway: only a failure of the presence answer is an error here.
    pub(super) async fn apply(&self, u: Update) -> Result<bool, LiveError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            self.shared.defer(self.tz, &u);
            return Ok(false);
        }
        let (b, seen) = self.update_batch(&u);
        let values = match query::<Vec<Value>>(&self.con, &b.pipe).await {
            Ok(v) => v,
            Err(e) if is_transient(&e) => {
                self.shared.mark_down(&self.addr, &e);
                self.shared.defer(self.tz, &u);
                return Ok(false);
            }
            Err(e) => return Err(self.failed(&e)),
        };
        let answers = self.shared.verify(&self.con, &self.addr, &b, values).await;
        match answers.values.get(seen) {
            Some(Value::ServerError(_)) | None => Err(answers.error.unwrap_or_else(|| {
                LiveError::Unavailable("Redis did not answer the presence check".to_owned())
            })),
            Some(previous) => {
                let stale = (u.at.timestamp() - self.shared.window) as f64;
                Ok(score(previous).is_none_or(|last| last <= stale))
            }
        }
    }
}
