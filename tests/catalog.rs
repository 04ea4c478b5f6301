//! The writer sees a catalog, not Databricks: a fake catalog records what it is asked and applies column additions
//! to the Delta log its own way, and the writer plans its rows against the table as the catalog left it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use segment_delta::catalog::{Catalog, CatalogResult};
use segment_delta::config::Lake;
use segment_delta::delta::commit::{self, Commit, Verdict};
use segment_delta::delta::protocol::Operation;
use segment_delta::delta::table::{self, TableState};
use segment_delta::delta::{Lakehouse, TableWrite};
use segment_delta::layout::TableKind;
use segment_delta::layout::rows::Row;
use segment_delta::layout::value::{ColumnType, Scalar};
use serde_json::Value;

/// A catalog that adds every column as BIGINT, whatever type was asked for.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Catalog for Fake {
    fn register<'a>(&'a self, schema: &'a str, table: &'a str, _: &'a str) -> BoxFuture<'a, CatalogResult<()>> {
        self.calls.lock().unwrap().push(format!("register {schema}.{table}"));
        Box::pin(async { Ok(()) })
    }

    fn add_columns<'a>(
        &'a self,
        schema: &'a str,
        table: &'a str,
        location: &'a str,
        columns: &'a [(String, ColumnType)],
    ) -> BoxFuture<'a, CatalogResult<usize>> {
        let asked: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
        self.calls.lock().unwrap().push(format!("add {schema}.{table}: {}", asked.join(", ")));
        Box::pin(async move {
            let log_store = table::log_store(location, &Default::default()).expect("log store");
            let mut state = TableState::load(&log_store, None).await.expect("read").map(Some).expect("a table");
            let mut c = Commit::new(Operation::Append, "ADD COLUMNS");
            c.new_columns = columns
                .iter()
                .map(|(n, _)| {
                    deltalake::kernel::StructField::new(
                        n.clone(),
                        segment_delta::delta::plan::kernel_type(ColumnType::BigInt),
                        true,
                    )
                })
                .collect();
            let judge = |_: &segment_delta::delta::log::Winners| Verdict::Rebase;
            commit::commit(&log_store, &mut state, &c, &judge, Duration::from_secs(5), &mut 0)
                .await
                .expect("committed");
            Ok(columns.len())
        })
    }

    fn optimize<'a>(&'a self, _: &'a str, _: &'a str, _: &'a str) -> BoxFuture<'a, CatalogResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

fn row(id: &str, cols: &[(&str, Scalar)]) -> Row {
    let mut all = vec![("id".into(), Scalar::Str(id.into())), ("user_id".into(), Scalar::Str("u".into()))];
    all.extend(cols.iter().map(|(n, v)| ((*n).into(), v.clone())));
    Row::new(id.into(), all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_columns_go_through_the_catalog_and_rows_follow_what_it_made() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(Fake::default());
    let lake =
        Lakehouse::new(Lake::Local(dir.path().to_path_buf()), Default::default(), 100).with_catalog(fake.clone());
    let write = |rows| TableWrite { schema: "web", table: "signed_up", kind: TableKind::Event, rows };

    // A new table: created by the writer, then registered.
    lake.append(write(vec![row("a", &[])]), 1).await.unwrap();
    assert_eq!(fake.calls(), ["register web.signed_up"]);

    // A new column: asked of the catalog, which makes it BIGINT; the rows are planned against that, so a text
    // value cannot be stored and is discarded, an integral one is kept.
    let written = lake
        .append(
            write(vec![row("b", &[("plan", Scalar::Str("pro".into()))]), row("c", &[("seats", Scalar::Int(3))])]),
            2,
        )
        .await
        .unwrap();
    assert_eq!(fake.calls()[1], "add web.signed_up: plan STRING, seats BIGINT");
    assert_eq!(written.rows, 2);
    assert_eq!(written.discards.len(), 1);
    assert_eq!((written.discards[0].column_name.as_str(), written.discards[0].column_value.as_str()), ("plan", "pro"));
    assert!(written.discards[0].reason.contains("BIGINT"), "{}", written.discards[0].reason);

    let rows = common::read_table(&dir.path().join("web/signed_up"));
    let seats: Vec<Option<i64>> = rows.iter().map(|r| r.get("seats").and_then(Value::as_i64)).collect();
    assert_eq!(rows.len(), 3);
    assert!(seats.contains(&Some(3)));
    assert!(rows.iter().all(|r| r.get("plan").is_none_or(Value::is_null)));

    // The schema change is the catalog's own commit; the append after it adds no metadata.
    let log = dir.path().join("web/signed_up/_delta_log");
    let commit = |v: u64| std::fs::read_to_string(log.join(format!("{v:020}.json"))).unwrap();
    assert!(commit(1).contains("\"ADD COLUMNS\"") && commit(1).contains("metaData"));
    assert!(commit(2).contains("\"WRITE\"") && !commit(2).contains("metaData"));
}
