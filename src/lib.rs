//! segment-delta: Segment-spec analytics events into Delta tables, as an Azure Functions custom handler.

pub mod batch;
pub mod config;
pub mod databricks;
pub mod delta;
pub mod eventhub;
pub mod http;
pub mod ingest;
pub mod maintain;
pub mod retry;
pub mod schema;
pub mod segment;
