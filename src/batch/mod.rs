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
    pub async fn submit(&self, mut sub: Submission) -> Result<(), SubmitError> {
        let inner = &self.inner;
        // A request is charged what it built, when that is more than its body.
        sub.bytes = sub.bytes.max(sub.events.iter().map(Mapped::size_estimate).sum());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Lake;
    use crate::layout::rows::{Offset, TableRow};
    use crate::layout::value::Scalar;

    fn event(table: &str, id: &str, offset: Option<i64>, discard: bool) -> Mapped {
        let offset = offset.map(|seq| Offset { app_id: "hub/p0".into(), seq });
        let row = Row {
            id: id.into(),
            cols: vec![("id".into(), Scalar::Str(id.into())), ("user_id".into(), Scalar::Str("u".into()))],
            offset: None,
        };
        let discards = if discard {
            vec![Discard {
                row_id: id.into(),
                table_name: table.into(),
                column_name: "bad".into(),
                column_value: "x".into(),
                reason: "test".into(),
                received_at: 0,
                offset: None,
            }]
        } else {
            Vec::new()
        };
        Mapped { rows: vec![TableRow { table: table.into(), kind: TableKind::Event, row }], discards }
            .with_offset(offset)
    }

    fn batcher(dir: &std::path::Path, policy: FlushPolicy) -> Batcher {
        let lake = Lakehouse::new(Lake::Local(dir.to_path_buf()), Default::default(), 100)
            .with_retry_budget(Duration::from_millis(200));
        Batcher::start(Arc::new(lake), policy, 1000)
    }

    fn rows(dir: &std::path::Path, table: &str) -> usize {
        let data = dir.join("s").join(table);
        std::fs::read_dir(&data).map_or(0, |d| {
            d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "parquet")).count()
        })
    }

    fn policy() -> FlushPolicy {
        FlushPolicy { interval: Duration::from_millis(20), ..FlushPolicy::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_commit_and_repeats_are_acknowledged_without_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let b = batcher(dir.path(), FlushPolicy { interval: Duration::from_millis(200), ..policy() });
        let sub = |id: &str| Submission { schema: "s".into(), events: vec![event("t", id, None, false)], bytes: 10 };
        let (x, y) = tokio::join!(b.submit(sub("a")), b.submit(sub("b")));
        x.unwrap();
        y.unwrap();
        assert_eq!(b.totals().commits, 1, "one micro-batch, one commit");
        b.submit(sub("a")).await.unwrap();
        assert_eq!(b.totals().commits, 1, "a repeat is acknowledged without a write");
        assert_eq!(rows(dir.path(), "t"), 1);
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_buffer_bound_requests_are_refused_and_nothing_waits() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy { interval: Duration::from_secs(60), max_buffered_bytes: 1000, ..policy() };
        let b = batcher(dir.path(), policy);
        let first = Submission { schema: "s".into(), events: vec![event("t", "a", None, false)], bytes: 800 };
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.submit(first).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = Submission { schema: "s".into(), events: vec![event("t", "b", None, false)], bytes: 800 };
        let refused = b.submit(second).await;
        assert!(matches!(refused, Err(SubmitError::Overloaded { buffered: 800, limit: 1000 })), "{refused:?}");
        // A 1-byte body that built a row and a discard is charged what it built, which does not fit either.
        let built = Submission { schema: "s".into(), events: vec![event("t", "c", None, true)], bytes: 1 };
        assert!(built.events[0].size_estimate() > 200);
        let refused = b.submit(built).await;
        assert!(matches!(refused, Err(SubmitError::Overloaded { buffered: 800, .. })), "{refused:?}");
        b.shutdown().await;
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_s_discards_wait_for_its_failed_table() {
        let dir = tempfile::tempdir().unwrap();
        // The table `broken` has a protocol this writer refuses.
        let log = dir.path().join("s/broken/_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        let schema = serde_json::json!({"type": "struct", "fields": [{"name": "id", "type": "string", "nullable": true, "metadata": {}}]});
        let commit = [
            serde_json::json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["futureFeature"]}}),
            serde_json::json!({"metaData": {"id": "x", "format": {"provider": "parquet", "options": {}},
                "schemaString": schema.to_string(), "partitionColumns": [], "configuration": {}, "createdTime": 0}}),
        ];
        std::fs::write(log.join("00000000000000000000.json"), commit.map(|a| a.to_string()).join("\n") + "\n").unwrap();
        let b = batcher(dir.path(), policy());
        // Event 1 goes to a good table, event 2 to the refused one; both carry a discard.
        let sub = Submission {
            schema: "s".into(),
            events: vec![event("good", "e1", Some(1), true), event("broken", "e2", Some(2), true)],
            bytes: 10,
        };
        assert!(b.submit(sub).await.is_err());
        b.shutdown().await;
        let discards =
            crate::delta::table::log_store(dir.path().join("s/discards").to_str().unwrap(), &Default::default())
                .unwrap();
        let state = crate::delta::table::TableState::load(&discards, None).await.unwrap().unwrap();
        let seen = crate::delta::log::txn_version(&discards, state.version, "hub/p0").await.unwrap();
        assert_eq!(seen, Some(1), "the discards table's offset stops before the event whose table failed");
    }
}
