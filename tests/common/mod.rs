//! Shared helpers for the in-process tests: a handler on a temporary lake, and a reader of its tables.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Float64Type, Int64Type, TimestampMicrosecondType};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Map, Value};

use segment_delta::app::AppState;
use segment_delta::config::{Config, Lake};

/// The Databricks emulator's binary (the workspace member `crates/databricks-emulator`): `DATABRICKS_EMULATOR_BIN`,
/// else beside this test's own directory in the target dir, where `cargo build --workspace` puts it.
pub fn emulator_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DATABRICKS_EMULATOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join("databricks-emulator");
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace --all-targets)",
        bin.display()
    );
    bin
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub state: AppState,
}

impl Harness {
    pub fn new(tune: impl FnOnce(&mut Config)) -> Harness {
        Harness::with_dir(tempfile::tempdir().expect("tempdir"), tune)
    }

    /// Another handler process on the same lake (a restart, or a second instance).
    pub fn sibling(&self, tune: impl FnOnce(&mut Config)) -> AppState {
        Harness::state_for(self.dir.path(), tune)
    }

    fn with_dir(dir: tempfile::TempDir, tune: impl FnOnce(&mut Config)) -> Harness {
        let state = Harness::state_for(dir.path(), tune);
        Harness { dir, state }
    }

    fn state_for(path: &Path, tune: impl FnOnce(&mut Config)) -> AppState {
        let mut config = Config { lake: Lake::Local(path.to_path_buf()), ..Config::default() };
        config.flush.interval = Duration::from_millis(20);
        tune(&mut config);
        AppState::build(config).expect("the application builds")
    }

    pub fn table(&self, schema: &str, table: &str) -> Vec<Map<String, Value>> {
        read_table(&self.dir.path().join(schema).join(table))
    }

    pub fn exists(&self, schema: &str, table: &str) -> bool {
        self.dir.path().join(schema).join(table).join("_delta_log").exists()
    }
}

/// Every row of an append-only table: all its data files, each value as JSON (timestamps as microseconds).
pub fn read_table(path: &Path) -> Vec<Map<String, Value>> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(path) else {
        return rows;
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    for f in files {
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap().build().unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let mut row = Map::new();
                for (c, field) in schema.fields().iter().enumerate() {
                    let col = batch.column(c);
                    let v = if col.is_null(i) {
                        Value::Null
                    } else {
                        match field.data_type() {
                            DataType::Utf8 => Value::from(col.as_string::<i32>().value(i)),
                            DataType::Int64 => Value::from(col.as_primitive::<Int64Type>().value(i)),
                            DataType::Float64 => Value::from(col.as_primitive::<Float64Type>().value(i)),
                            DataType::Boolean => Value::from(col.as_boolean().value(i)),
                            DataType::Timestamp(..) => {
                                Value::from(col.as_primitive::<TimestampMicrosecondType>().value(i))
                            }
                            other => Value::from(format!("<{other}>")),
                        }
                    };
                    row.insert(field.name().clone(), v);
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// The column names and Delta types of a table's latest schema, from its log.
pub fn delta_columns(path: &Path) -> Vec<(String, String)> {
    let log = path.join("_delta_log");
    let mut commits: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let mut schema = None;
    for c in commits {
        for line in std::fs::read_to_string(c).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if let Some(s) = v.pointer("/metaData/schemaString").and_then(Value::as_str) {
                schema = Some(serde_json::from_str::<Value>(s).unwrap());
            }
        }
    }
    schema.expect("a metaData action")["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f["type"].as_str().unwrap_or("complex").to_string()))
        .collect()
}
