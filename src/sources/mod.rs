//! Where events come in: the HTTP server (the Tracking API and the Functions host's invocations), the Event Hub
//! trigger, and the backfill from files. Each hands its bodies to `intake`.

pub mod eventhub;
pub mod http;
pub mod ingest;

use crate::config::Config;
use crate::layout::rows::Mapped;
use crate::maintain::forget::{Forgotten, forget};

/// The users the `delete` events among `events` ask to forget.
pub fn users_to_forget(events: &[Mapped]) -> Vec<String> {
    let mut users: Vec<String> = events.iter().filter_map(|m| m.forget.clone()).collect();
    users.sort();
    users.dedup();
    users
}

/// Removes the rows of `users` from every table of `schema` (called once the request's own rows are committed, so
/// that rows sent before a delete are removed too). Fails, naming the tables, when a table could not be changed.
pub async fn apply_deletes(config: &Config, schema: &str, users: &[String]) -> Result<Forgotten, String> {
    if users.is_empty() {
        return Ok(Forgotten::default());
    }
    let done =
        forget(config, schema, users).await.map_err(|e| format!("deleting the rows of {} users: {e}", users.len()))?;
    if done.failed.is_empty() {
        Ok(done)
    } else {
        let failed: Vec<String> = done.failed.iter().map(|(t, e)| format!("{t}: {e}")).collect();
        Err(format!("the rows of the users to forget could not be removed from {}", failed.join("; ")))
    }
}
