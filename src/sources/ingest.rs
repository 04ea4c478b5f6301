//! The backfill path: Segment events from JSONL / JSON files (gzip too) through the same pipeline as the API.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::batch::{Batcher, Submission, Totals};
use crate::config::Config;
use crate::intake::body::{self, RawEvent};
use crate::intake::{map_body, map_raw};
use crate::layout::rows::{Mapped, Offset};
use crate::layout::value::now_micros;
use crate::segment::event::Arrival;
use crate::segment::scan;

/// Events per submission, and submissions in flight at once.
const CHUNK_EVENTS: usize = 5_000;
const IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing failed: {0}")]
    Submit(#[from] crate::batch::SubmitError),
    #[error("{0}")]
    Forget(String),
}

#[derive(Debug)]
pub struct Summary {
    pub events: u64,
    pub totals: Totals,
    /// Rows removed by the `delete` events of the files, per table.
    pub forgotten: crate::maintain::forget::Forgotten,
    /// With `--dry-run`: what would be written.
    pub preview: Option<Preview>,
    pub seconds: f64,
}

/// What a dry run found: rows and columns per table (and which columns the tables lack), discards by table and
/// kind of reason, users to forget. Type conflicts with existing columns are found only when writing.
#[derive(Debug, Default)]
pub struct Preview {
    pub tables: BTreeMap<String, (u64, BTreeSet<String>)>,
    /// Columns each table would gain (all of them for a new table), and whether the table is new.
    pub new_columns: BTreeMap<String, (bool, Vec<String>)>,
    pub discards: BTreeMap<(String, &'static str), u64>,
    pub forget: usize,
}

impl Preview {
    fn add(&mut self, events: impl Iterator<Item = Mapped>) {
        for m in events {
            for r in m.rows {
                let entry = self.tables.entry(r.table).or_default();
                entry.0 += 1;
                for (name, _) in r.row.columns() {
                    if !entry.1.contains(name.as_ref()) {
                        entry.1.insert(name.to_string());
                    }
                }
            }
            for d in m.discards {
                *self.discards.entry((d.table_name, crate::metrics::reason_kind(&d.reason))).or_default() += 1;
            }
        }
    }

    /// Compares the columns seen with the tables as they are in the lake.
    async fn compare(&mut self, config: &Config, schema: &str) {
        // Only the tables that exist are opened (opening a local table creates its directory).
        let present: BTreeSet<String> =
            crate::layout::paths::table_names(&config.lake, &config.storage.options, schema)
                .await
                .unwrap_or_default()
                .into_iter()
                .collect();
        for (table, (_, columns)) in &self.tables {
            let uri = crate::layout::paths::table_uri(&config.lake, schema, table);
            if !present.contains(table) {
                self.new_columns.insert(table.clone(), (true, columns.iter().cloned().collect()));
                continue;
            }
            let existing: Option<BTreeSet<String>> = match crate::delta::table::log_store(&uri, &config.storage.options)
            {
                Ok(store) => match crate::delta::table::TableState::load(&store, None).await {
                    Ok(Some(state)) => Some(state.schema().fields().map(|f| f.name().to_string()).collect()),
                    _ => None,
                },
                Err(_) => None,
            };
            let new: Vec<String> =
                columns.iter().filter(|c| existing.as_ref().is_none_or(|e| !e.contains(*c))).cloned().collect();
            if existing.is_none() || !new.is_empty() {
                self.new_columns.insert(table.clone(), (existing.is_none(), new));
            }
        }
    }
}

/// The progress bar of a running load, which log lines are written above.
static PROGRESS: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

fn lock_progress() -> std::sync::MutexGuard<'static, Option<indicatif::ProgressBar>> {
    PROGRESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` (which writes a log line) with the progress bar, if one is shown, cleared around it, so that lines do
/// not tear it.
pub fn above_progress<R>(f: impl FnOnce() -> R) -> R {
    let bar = lock_progress().clone();
    match bar {
        Some(bar) => bar.suspend(f),
        None => f(),
    }
}

fn open(path: &Path, progress: &indicatif::ProgressBar) -> Result<Box<dyn BufRead>, IngestError> {
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let mut file = BufReader::new(progress.wrap_read(File::open(path).map_err(io)?));
    let gz = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(BufReader::new(flate2::bufread::MultiGzDecoder::new(file))) } else { Box::new(file) })
}

/// Maps one JSON text (a line, or a whole file): an event, a `{"batch": [...]}` body, or an array of events. Items
/// are split without parsing the whole text first, so one bad item is discarded alone, as the API does. Returns
/// about how many bytes the events it added hold in memory, summed as each is mapped (see [`map_body`]).
fn map_document(text: &[u8], received_at: i64, out: &mut Vec<Mapped>) -> usize {
    let arrival = |context, sent_at| Arrival { received_at, context, keep_received_at: true, sent_at };
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[')
        && let Ok(items) = scan::array_items(text, 0..text.len())
    {
        let mut built = 0;
        for r in items {
            let mapped = map_raw(&RawEvent::new(&text[r]), &arrival(None, None), None);
            built += mapped.size_estimate();
            out.push(mapped);
        }
        return built;
    }
    let parsed = body::split_unlimited(text);
    let a = arrival(parsed.context.as_ref(), parsed.sent_at);
    let (events, built) = map_body(&parsed, &a, None);
    out.extend(events);
    built
}

/// A file's identity as a stream: its content's SHA-1. Loading the same content again (a re-run, or a run resumed
/// after a failure) skips the chunks each table already holds: every chunk's rows carry the file's stream and the
/// chunk's number, committed as a Delta `txn` with the rows, as the Event Hub trigger does with its offsets.
fn stream_id(path: &Path) -> Result<Arc<str>, IngestError> {
    use sha1::{Digest, Sha1};
    let io = |source| IngestError::Io { path: path.to_path_buf(), source };
    let mut file = BufReader::new(File::open(path).map_err(io)?);
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("segment-delta/ingest/{digest}").into())
}

/// Loads every file into `schema`, printing progress to the terminal, and returns the counts. Unless `force` is
/// set, the chunks of a file that a table already holds (the same content loaded before) are skipped.
pub async fn run(
    config: &Config,
    batcher: &Batcher,
    schema: &str,
    files: &[PathBuf],
    force: bool,
    dry_run: bool,
) -> Result<Summary, IngestError> {
    let started = Instant::now();
    let total: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let progress = indicatif::ProgressBar::new(total);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    *lock_progress() = Some(progress.clone());
    let mut preview = dry_run.then(Preview::default);
    let mut in_flight = FuturesUnordered::new();
    let mut events = 0u64;
    let mut chunk: Vec<Mapped> = Vec::new();
    let mut chunk_bytes = 0usize;
    // What the chunk's events hold in memory, charged when more than its text.
    let mut chunk_built = 0usize;
    // Users that `delete` events ask to forget: once everything is loaded, their rows are removed.
    let mut forget: Vec<String> = Vec::new();
    let submit = |chunk: Vec<Mapped>, bytes: usize, built: usize| {
        let b = batcher.clone();
        let schema = schema.to_string();
        async move { b.submit(Submission { schema, events: chunk, bytes: bytes.max(built) }).await }
    };
    for path in files {
        let stream = if force { None } else { Some(stream_id(path)?) };
        let mut number = 0i64;
        let mut numbered = |chunk: Vec<Mapped>| -> Vec<Mapped> {
            number += 1;
            match &stream {
                Some(app_id) => {
                    let offset = Some(Offset { app_id: app_id.clone(), seq: number });
                    chunk.into_iter().map(|m| m.with_offset(offset.clone())).collect()
                }
                None => chunk,
            }
        };
        let mut reader = open(path, &progress)?;
        let whole_document = {
            let name = path.to_string_lossy().trim_end_matches(".gz").to_ascii_lowercase();
            name.ends_with(".json")
        };
        let received_at = now_micros();
        let io = |source| IngestError::Io { path: path.clone(), source };
        let mut texts: Box<dyn Iterator<Item = Result<Vec<u8>, std::io::Error>>> = if whole_document {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).map_err(io)?;
            Box::new(std::iter::once(Ok(all)))
        } else {
            Box::new(reader.split(b'\n'))
        };
        for text in texts.by_ref() {
            let text = text.map_err(io)?;
            if text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let before = chunk.len();
            chunk_built += map_document(&text, received_at, &mut chunk);
            events += (chunk.len() - before) as u64;
            chunk_bytes += text.len();
            forget.extend(chunk[before..].iter().filter_map(|m| m.forget.clone()));
            if let Some(p) = &mut preview {
                p.add(chunk.drain(..));
                (chunk_bytes, chunk_built) = (0, 0);
                continue;
            }
            if chunk.len() >= CHUNK_EVENTS {
                while in_flight.len() >= IN_FLIGHT {
                    if let Some(r) = in_flight.next().await {
                        r?;
                    }
                }
                in_flight.push(submit(
                    numbered(std::mem::take(&mut chunk)),
                    std::mem::take(&mut chunk_bytes),
                    std::mem::take(&mut chunk_built),
                ));
                progress.set_message(format!("{events} events"));
            }
        }
        // Chunks end with their file, so that a file's chunks are the same on every run.
        if !chunk.is_empty() {
            in_flight.push(submit(
                numbered(std::mem::take(&mut chunk)),
                std::mem::take(&mut chunk_bytes),
                std::mem::take(&mut chunk_built),
            ));
        }
    }
    // The input is read: what waits for the flush interval is written now.
    batcher.drain();
    while let Some(r) = in_flight.next().await {
        r?;
    }
    progress.finish_and_clear();
    *lock_progress() = None;
    forget.sort();
    forget.dedup();
    if let Some(mut p) = preview {
        p.forget = forget.len();
        p.compare(config, schema).await;
        return Ok(Summary {
            events,
            totals: Totals::default(),
            forgotten: Default::default(),
            preview: Some(p),
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    let forgotten = super::apply_deletes(config, schema, &forget).await.map_err(IngestError::Forget)?;
    Ok(Summary { events, totals: batcher.totals(), forgotten, preview: None, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_says_what_the_events_it_added_hold_in_memory() {
        let array = br#"[{"type": "track", "event": "A", "userId": "u", "properties": {"p": "x"}}, {"type": "identify", "userId": "u"}, 7]"#;
        let batch = br#"{"batch": [{"type": "page", "userId": "u", "name": "Home"}], "context": {"ip": "1.1.1.1"}}"#;
        let mut out = Vec::new();
        let first = map_document(array, 7, &mut out);
        assert_eq!(out.len(), 3, "two events and a discarded item");
        assert_eq!(first, out.iter().map(Mapped::size_estimate).sum::<usize>());
        let second = map_document(batch, 7, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(second, out[3].size_estimate());
        assert!(first > 0 && second > 0);
    }
}
