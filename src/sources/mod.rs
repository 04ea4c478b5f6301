//! Where events come in: the HTTP server (the Tracking API and the Functions host's invocations), the Event Hub
//! trigger, and the backfill from files. Each hands its bodies to `intake`.

pub mod eventhub;
pub mod http;
pub mod ingest;
