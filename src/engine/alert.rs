//! An alert-triggered run sees its alert as it is now: before each step the engine reads the
//! occurrence's `status` and `endsAt` from the store (one primary-key read, only for runs an
//! alert started), so a resolve that arrives while the run goes on is visible to its next step
//! (`alert.status == 'resolved'`).

use serde_json::json;

use super::{state::RunState, Engine};
use crate::store::alerts;

impl Engine {
    pub(super) async fn refresh_alert(&self, state: &mut RunState) {
        let alert = &state.ctx["alert"];
        let (Some(fp), Some(starts_at)) =
            (alert["fingerprint"].as_str(), alert["startsAt"].as_str())
        else {
            return;
        };
        match alerts::current(&self.services.store, fp, starts_at).await {
            Ok(Some((status, ends_at))) => {
                let alert = &mut state.ctx["alert"];
                alert["status"] = json!(status);
                if let Some(ends_at) = ends_at {
                    alert["endsAt"] = json!(ends_at);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Reading the run's alert failed; keeping what it had.")
            }
        }
    }
}
