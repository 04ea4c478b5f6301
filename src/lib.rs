//! segment-delta: Segment-spec analytics events into Delta tables, as an Azure Functions custom handler.
//!
//! The modules follow the data's path. Events come in through `sources` (HTTP, Event Hub, the backfill) and the
//! front door they share, `intake`; `segment` validates them and `schema` turns them into rows; `batch` gathers
//! rows into micro-batches; `delta` writes them; `catalog` (implemented by `databricks`) is told of new tables and
//! columns; `maintain` keeps the tables healthy; `ops` answers the operator (health, metrics, discards). `layout` says which tables and columns exist and where they
//! live; `config`, `retry` and `metrics` are the ground everything stands on; `app` wires it all together.

pub mod app;
pub mod batch;
pub mod catalog;
pub mod config;
pub mod databricks;
pub mod delta;
pub mod intake;
pub mod layout;
pub mod maintain;
pub mod metrics;
pub mod ops;
pub mod retry;
pub mod schema;
pub mod segment;
pub mod sources;
