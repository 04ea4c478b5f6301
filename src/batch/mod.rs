//! Group commit: rows from every request join the current micro-batch, which is written as one commit per
//! table when it is old, large or numerous enough. A request is answered only once its rows are committed.

pub mod dedup;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

use crate::config::FlushPolicy;
use crate::delta::errors::Failure;
use crate::delta::{Lakehouse, TableWrite, WriteError};
use crate::layout::rows::{Discard, Mapped, Row};
use crate::layout::value::now_micros;
use crate::layout::{DISCARDS, TableKind};
use dedup::{Fingerprints, Recent, RowKey};

/// Tables written at once within one flush.
const TABLE_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SubmitError {
    #[error("too much data is waiting to be written ({buffered} bytes, limit {limit}); retry shortly")]
    Overloaded { buffered: usize, limit: usize },
    #[error("the server is shutting down; retry shortly")]
    ShuttingDown,
    #[error(transparent)]
    Write(Arc<WriteError>),
}

/// What one request brings: its schema and the mapped events.
#[derive(Debug, Default)]
pub struct Submission {
    pub schema: String,
    pub events: Vec<Mapped>,
    /// Body size, charged against the buffer bound until the flush that writes it is done.
    pub bytes: usize,
}

/// Counts that a flush reports, summed over a run (the ingest command prints them).
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub rows: BTreeMap<String, u64>,
    pub commits: u64,
    pub discards: u64,
    /// Rows a table already held from an earlier delivery of the same stream offsets.
    pub skipped: u64,
}

type TableId = (String, String);

struct Waiter {
    tables: BTreeSet<TableId>,
    tx: oneshot::Sender<Result<(), SubmitError>>,
}

#[derive(Default)]
struct Pending {
    tables: BTreeMap<TableId, (TableKind, Vec<(RowKey, Row)>)>,
    discards: BTreeMap<String, Vec<(RowKey, Discard)>>,
    keys: HashSet<RowKey>,
    waiters: Vec<Waiter>,
    events: usize,
    bytes: usize,
    first_at: Option<Instant>,
}

struct Inner {
    policy: FlushPolicy,
    lake: Arc<Lakehouse>,
    pending: Mutex<Pending>,
    committed: Mutex<Recent>,
    fingerprints: Fingerprints,
    /// Bytes accepted and not yet written (pending plus the flush in progress).
    buffered: AtomicUsize,
    wake: Notify,
    closing: std::sync::atomic::AtomicBool,
    /// Set on shutdown: every micro-batch is due at once.
    draining: std::sync::atomic::AtomicBool,
    totals: Mutex<Totals>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Clone)]
pub struct Batcher {
    inner: Arc<Inner>,
    flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Batcher {
    pub fn start(lake: Arc<Lakehouse>, policy: FlushPolicy, dedup_capacity: usize) -> Batcher {
        let inner = Arc::new(Inner {
            policy,
            lake,
            pending: Mutex::new(Pending::default()),
            committed: Mutex::new(Recent::new(dedup_capacity)),
            fingerprints: Fingerprints::default(),
            buffered: AtomicUsize::new(0),
            wake: Notify::new(),
            closing: Default::default(),
            draining: Default::default(),
            totals: Mutex::new(Totals::default()),
        });
        let handle = tokio::spawn(flusher(inner.clone()));
        Batcher { inner, flusher: Arc::new(Mutex::new(Some(handle))) }
    }

    /// Adds a request's rows to the micro-batch and waits until they are committed.
    pub async fn submit(&self, sub: Submission) -> Result<(), SubmitError> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let limit = inner.policy.max_buffered_bytes;
        let buffered = inner.buffered.fetch_add(sub.bytes, Ordering::SeqCst);
        if buffered + sub.bytes > limit && buffered > 0 {
            inner.buffered.fetch_sub(sub.bytes, Ordering::SeqCst);
            return Err(SubmitError::Overloaded { buffered, limit });
        }
        let (tx, rx) = oneshot::channel();
        let added = {
            let committed = lock(&inner.committed);
            let mut p = lock(&inner.pending);
            let mut tables = BTreeSet::new();
            let schema = sub.schema;
            for mapped in sub.events {
                for tr in mapped.rows {
                    let key = inner.fingerprints.key((schema.as_str(), tr.table.as_str(), &*tr.row.id));
                    if committed.contains(&key) || !p.keys.insert(key) {
                        continue;
                    }
                    let id = (schema.clone(), tr.table);
                    tables.insert(id.clone());
                    p.tables.entry(id).or_insert_with(|| (tr.kind, Vec::new())).1.push((key, tr.row));
                }
                for d in mapped.discards {
                    let key = inner.fingerprints.key((
                        schema.as_str(),
                        (d.row_id.as_str(), d.table_name.as_str(), d.column_name.as_str()),
                        (d.column_value.as_str(), d.reason.as_str()),
                    ));
                    if committed.contains(&key) || !p.keys.insert(key) {
                        continue;
                    }
                    tables.insert((schema.clone(), DISCARDS.to_string()));
                    p.discards.entry(schema.clone()).or_default().push((key, d));
                }
                p.events += 1;
            }
            if tables.is_empty() {
                false
            } else {
                p.bytes += sub.bytes;
                p.first_at.get_or_insert_with(Instant::now);
                p.waiters.push(Waiter { tables, tx });
                true
            }
        };
        if !added {
            // Everything in it was committed before (a client retry): acknowledge without writing.
            inner.buffered.fetch_sub(sub.bytes, Ordering::SeqCst);
            return Ok(());
        }
        inner.wake.notify_one();
        rx.await.unwrap_or(Err(SubmitError::ShuttingDown))
    }

    pub fn totals(&self) -> Totals {
        lock(&self.inner.totals).clone()
    }

    /// Writes every micro-batch as soon as it has rows, without waiting for the interval.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// Stops taking requests, writes everything accepted, and waits for that to finish.
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
        let handle = lock(&self.flusher).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        self.inner.lake.finish().await;
    }
}

/// The earliest stream offset among `rows`, per stream.
fn earliest_offsets(rows: &[Row]) -> HashMap<Arc<str>, i64> {
    let mut earliest: HashMap<Arc<str>, i64> = HashMap::new();
    for o in rows.iter().filter_map(|r| r.offset.as_ref()) {
        let e = earliest.entry(o.app_id.clone()).or_insert(o.seq);
        *e = (*e).min(o.seq);
    }
    earliest
}

/// Waits for the first row of a micro-batch, then for its deadline or size trigger, then writes it.
async fn flusher(inner: Arc<Inner>) {
    loop {
        let (due, closing) = {
            let p = lock(&inner.pending);
            let closing = inner.closing.load(Ordering::SeqCst);
            let draining = closing || inner.draining.load(Ordering::SeqCst);
            let full = p.events >= inner.policy.max_events || p.bytes >= inner.policy.max_bytes;
            let due = p.first_at.map(|t| if full || draining { Instant::now() } else { t + inner.policy.interval });
            (due, closing)
        };
        match due {
            None if closing => return,
            None => inner.wake.notified().await,
            Some(due) if due > Instant::now() => {
                let sleep =
                    tokio::time::sleep(due.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
                tokio::select! {
                    _ = sleep => {}
                    _ = inner.wake.notified() => {}
                }
            }
            Some(_) => {
                let batch = std::mem::take(&mut *lock(&inner.pending));
                write_batch(&inner, batch).await;
            }
        }
    }
}

async fn write_batch(inner: &Inner, mut batch: Pending) {
    let uuid_ts = now_micros();
    let bytes = batch.bytes;
    // Rows a flush that finished after they were accepted has already committed.
    {
        let committed = lock(&inner.committed);
        for (_, rows) in batch.tables.values_mut() {
            rows.retain(|(k, _)| !committed.contains(k));
        }
        for discards in batch.discards.values_mut() {
            discards.retain(|(k, _)| !committed.contains(k));
        }
        batch.discards.retain(|_, d| !d.is_empty());
    }
    let mut failed: BTreeMap<TableId, Arc<WriteError>> = BTreeMap::new();
    let mut totals = Totals::default();
    // Each table is written on its own task, so that building, encoding and dropping the rows of different
    // tables use every core.
    let writes = batch.tables.into_iter().map(|((schema, table), (kind, rows))| {
        let lake = inner.lake.clone();
        async move {
            let (keys, rows): (Vec<RowKey>, Vec<Row>) = rows.into_iter().unzip();
            let earliest = earliest_offsets(&rows);
            let (s, t) = (schema.clone(), table.clone());
            let task = tokio::spawn(async move {
                if rows.is_empty() {
                    Ok(Default::default())
                } else {
                    lake.append(TableWrite { schema: &s, table: &t, kind, rows }, uuid_ts).await
                }
            });
            let result = task.await.unwrap_or_else(|e| {
                Err(WriteError::new(&table, Failure::Unavailable(format!("the write stopped: {e}"))))
            });
            ((schema, table), keys, earliest, result)
        }
    });
    let results: Vec<_> = futures::stream::iter(writes).buffer_unordered(TABLE_CONCURRENCY).collect().await;
    let mut committed_keys = Vec::new();
    // Per schema and stream, the earliest offset of a row whose table write failed.
    let mut held: HashMap<String, HashMap<Arc<str>, i64>> = HashMap::new();
    for (id, keys, earliest, result) in results {
        match result {
            Ok(w) => {
                totals.skipped += w.skipped as u64;
                if w.rows > 0 {
                    totals.commits += 1;
                    *totals.rows.entry(format!("{}.{}", id.0, id.1)).or_default() += w.rows as u64;
                }
                committed_keys.extend(keys);
                for d in w.discards {
                    let key = inner.fingerprints.key((
                        id.0.as_str(),
                        id.1.as_str(),
                        d.row_id.as_str(),
                        d.column_name.as_str(),
                    ));
                    batch.discards.entry(id.0.clone()).or_default().push((key, d));
                }
            }
            Err(e) => {
                tracing::error!(schema = %id.0, table = %id.1, error = %e, "write failed");
                let streams = held.entry(id.0.clone()).or_default();
                for (app, seq) in earliest {
                    let h = streams.entry(app).or_insert(seq);
                    *h = (*h).min(seq);
                }
                failed.insert(id, Arc::new(e));
            }
        }
    }
    for (schema, mut discards) in batch.discards {
        // The discards table records how far each stream was written: discards of a stream from where one of its
        // table writes failed are held back, or its offset would move past rows that are to be delivered again
        // (and whose discards would then be skipped as already written).
        if let Some(streams) = held.get(&schema) {
            discards
                .retain(|(_, d)| d.offset.as_ref().is_none_or(|o| streams.get(&o.app_id).is_none_or(|h| o.seq < *h)));
            if discards.is_empty() {
                continue;
            }
        }
        let id = (schema.clone(), DISCARDS.to_string());
        let (keys, rows): (Vec<RowKey>, Vec<Row>) = discards.into_iter().map(|(k, d)| (k, d.into_row())).unzip();
        let n = rows.len();
        match inner
            .lake
            .append(TableWrite { schema: &schema, table: DISCARDS, kind: TableKind::Discards, rows }, uuid_ts)
            .await
        {
            Ok(_) => {
                committed_keys.extend(keys);
                totals.commits += 1;
                totals.discards += n as u64;
            }
            Err(e) => {
                tracing::error!(schema = %schema, table = DISCARDS, error = %e, "write failed");
                failed.insert(id, Arc::new(e));
            }
        }
    }
    {
        let mut committed = lock(&inner.committed);
        for k in committed_keys {
            committed.insert(k);
        }
    }
    {
        let mut t = lock(&inner.totals);
        for (table, n) in totals.rows {
            *t.rows.entry(table).or_default() += n;
        }
        t.commits += totals.commits;
        t.discards += totals.discards;
        t.skipped += totals.skipped;
    }
    inner.buffered.fetch_sub(bytes, Ordering::SeqCst);
    for w in batch.waiters {
        let err = w.tables.iter().find_map(|t| failed.get(t)).cloned();
        let _ = w.tx.send(match err {
            None => Ok(()),
            Some(e) => Err(SubmitError::Write(e)),
        });
    }
}
