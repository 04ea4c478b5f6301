//! Many writers, one table: commits/s, events/s, conflict retries per commit and commit latency as the number of
//! concurrent writers grows. Each writer is a separate `Lakehouse` (its own table handle and `txn` id), as
//! separate Function instances are.
//!
//! cargo run --release -p segment-delta-bench --bin bench-writers -- --lake /tmp/bench-lake --writers 1,2,4,8,16 --seconds 10
//! AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:10000 SEGMENT_DELTA_STORAGE_EMULATOR=true \
//!   cargo run --release -p segment-delta-bench --bin bench-writers -- --lake az://bench/run1

/// The handler's allocator.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::{Duration, Instant};

use clap::Parser;
use segment_delta::config::Lake;
use segment_delta::config::storage;
use segment_delta::delta::{Lakehouse, TableWrite};
use segment_delta::layout::TableKind;
use segment_delta::layout::rows::Row;
use segment_delta::layout::value::now_micros;
use segment_delta::layout::value::{Scalar, Text};

#[derive(Parser)]
struct Args {
    /// Lake root: a directory, or az:// / abfss:// (with the storage settings of the main binary).
    #[arg(long, default_value = "./bench-lake")]
    lake: String,
    /// Writer counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    writers: Vec<usize>,
    /// Seconds per writer count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events per commit.
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

fn rows(writer: usize, n: usize, start: usize) -> Vec<Row> {
    let received = now_micros();
    (0..n)
        .map(|i| {
            let id: Text = format!("w{writer}-{}", start + i).into();
            let text = |s: &str| Scalar::Str(s.into());
            Row::new(
                id.clone(),
                vec![
                    ("id".into(), Scalar::Str(id.clone())),
                    ("user_id".into(), text(&format!("u{}", i % 997))),
                    ("received_at".into(), Scalar::from(received)),
                    ("timestamp".into(), Scalar::from(received)),
                    ("event".into(), text("order_completed")),
                    ("event_text".into(), text("Order Completed")),
                    ("context_library_name".into(), text("analytics.js")),
                    ("context_ip".into(), text("203.0.113.9")),
                    ("context_page_url".into(), text("https://www.example.com/checkout")),
                ],
            )
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lake = Lake::parse(&args.lake)?;
    let env = |k: &str| std::env::var(k).ok();
    let storage = storage::from_lookup(&lake, &env)?;
    println!(
        "lake {} ({}), {} events per commit, {} s per step",
        args.lake, storage.credential, args.batch, args.seconds
    );
    println!(
        "| writers | commits | commits/s | events/s | conflict retries/commit | p50 commit ms | p99 commit ms | failed |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let run = uuid::Uuid::new_v4().simple().to_string();
    for &n in &args.writers {
        let schema = format!("bench_{}_{n}", &run[..8]);
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..n {
            let lake = Lakehouse::new(lake.clone(), storage.options.clone(), 1000);
            let (schema, batch) = (schema.clone(), args.batch);
            tasks.push(tokio::spawn(async move {
                let (mut latencies, mut retries, mut failed, mut sent) = (Vec::new(), 0u64, 0u64, 0usize);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let write = TableWrite {
                        schema: &schema,
                        table: "tracks",
                        kind: TableKind::Tracks,
                        rows: rows(w, batch, sent),
                    };
                    match lake.append(write, now_micros()).await {
                        Ok(written) => {
                            latencies.push(t.elapsed());
                            retries += u64::from(written.conflict_retries);
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("writer {w}: {e}");
                        }
                    }
                    sent += batch;
                }
                (latencies, retries, failed, lake)
            }));
        }
        let (mut latencies, mut retries, mut failed, mut lakes) = (Vec::new(), 0, 0, Vec::new());
        for t in tasks {
            let (l, r, f, lake) = t.await?;
            latencies.extend(l);
            retries += r;
            failed += f;
            lakes.push(lake);
        }
        let secs = started.elapsed().as_secs_f64();
        for lake in lakes {
            lake.finish().await;
        }
        latencies.sort();
        let commits = latencies.len();
        println!(
            "| {n} | {commits} | {:.1} | {:.0} | {:.2} | {:.0} | {:.0} | {failed} |",
            commits as f64 / secs,
            (commits * args.batch) as f64 / secs,
            retries as f64 / commits.max(1) as f64,
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
        );
    }
    Ok(())
}
