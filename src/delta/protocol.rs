//! Which tables this writer may write, and how: an allow-list over the table's protocol and metadata.
//!
//! The lake is shared with Databricks, whose users change tables under us (column mapping, constraints, deletion
//! vectors, row tracking, ...). Every operation first asks [`check`]: a table whose protocol asks for anything this
//! writer does not implement for that operation is refused by name and nothing is written. Features are decided
//! one by one against the Delta protocol (PROTOCOL.md): implemented (column mapping, in-commit timestamps, row
//! tracking for appends, NOT NULL columns, partitions, append-only), harmless for the operation (deletion vectors
//! or a v2 checkpoint policy for an append), or refused (constraints, generated and identity columns, Iceberg
//! compatibility, catalog-managed commits, and every feature this writer does not know).
//!
//! The Delta kernel's own write check is not used as the gate: it refuses every legacy writer-version 3–6 table
//! (check constraints are implied by those versions even when none is defined), which would refuse every
//! column-mapped table Databricks makes, and it allows features whose duties fall on its own commit path.

use std::collections::BTreeSet;
use std::fmt;

use deltalake::kernel::{Metadata, Protocol, StructType};

/// What a writer is about to do to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Add new rows (and possibly nullable columns).
    Append,
    /// Rewrite files into fewer, with no change to the rows (`dataChange=false`).
    Compact,
    /// Replace rows: remove files with `dataChange=true` and add new rows (the `users`/`accounts` upserts).
    Upsert,
    /// Remove rows: remove files with `dataChange=true` and add back the rows that stay.
    Delete,
    /// Write a classic checkpoint of the newest version.
    Checkpoint,
    /// Delete commit files that a checkpoint covers.
    LogCleanup,
    /// Delete data files the table no longer references.
    Vacuum,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Append => "append",
            Operation::Compact => "compaction",
            Operation::Upsert => "upsert",
            Operation::Delete => "delete",
            Operation::Checkpoint => "checkpoint",
            Operation::LogCleanup => "log cleanup",
            Operation::Vacuum => "vacuum",
        }
    }

    /// Whether the operation writes rows that did not exist before (so that row-level rules apply to them).
    fn writes_new_rows(self) -> bool {
        matches!(self, Operation::Append | Operation::Upsert)
    }

    /// Whether the operation removes rows (`remove` with `dataChange=true`).
    fn removes_rows(self) -> bool {
        matches!(self, Operation::Upsert | Operation::Delete)
    }

    /// Whether the operation writes data files from rows it read back.
    fn rewrites_files(self) -> bool {
        matches!(self, Operation::Compact | Operation::Upsert | Operation::Delete)
    }
}

/// Why a table cannot be written: the feature (or setting) and what the writer would have had to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub operation: Operation,
    pub feature: String,
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to {} this table: it uses the Delta feature {} ({}); nothing was written",
            self.operation.name(),
            self.feature,
            self.reason
        )
    }
}

impl std::error::Error for Refusal {}

/// How the table maps column names to the names in its data files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColumnMapping {
    #[default]
    None,
    Name,
    Id,
}

/// What the checks found that the writer must then honour (by default: nothing, as for a table being created).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub column_mapping: ColumnMapping,
    /// Every commit carries `commitInfo.inCommitTimestamp` (and it comes first).
    pub in_commit_timestamps: bool,
    /// Appends assign `baseRowId` and `defaultRowCommitVersion`, and advance the `delta.rowTracking` domain.
    pub row_tracking: bool,
    /// `delta.appendOnly`: no `remove` with `dataChange=true`.
    pub append_only: bool,
}

/// Every feature this writer knows, by protocol name.
const KNOWN: &[&str] = &[
    "appendOnly",
    "invariants",
    "checkConstraints",
    "changeDataFeed",
    "generatedColumns",
    "columnMapping",
    "identityColumns",
    "deletionVectors",
    "timestampNtz",
    "domainMetadata",
    "clustering",
    "rowTracking",
    "inCommitTimestamp",
    "typeWidening",
    "typeWidening-preview",
    "v2Checkpoint",
    "vacuumProtocolCheck",
    "icebergCompatV1",
    "icebergCompatV2",
    "icebergCompatV3",
    "allowColumnDefaults",
    "checkpointProtection",
    "catalogManaged",
    "catalogOwned-preview",
    "variantType",
    "variantType-preview",
    "variantShredding",
    "variantShredding-preview",
    "collations",
    "collations-preview",
    "materializePartitionColumns",
];

/// The features a table has: the listed ones for table-features protocols, the implied ones for legacy versions.
pub fn features(protocol: &Protocol) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let writer = protocol.min_writer_version();
    if writer >= 7 {
        out.extend(protocol.writer_features().into_iter().flatten().map(|f| f.to_string()));
    } else {
        let implied: &[(i32, &str)] = &[
            (2, "appendOnly"),
            (2, "invariants"),
            (3, "checkConstraints"),
            (4, "changeDataFeed"),
            (4, "generatedColumns"),
            (5, "columnMapping"),
            (6, "identityColumns"),
        ];
        out.extend(implied.iter().filter(|(v, _)| writer >= *v).map(|(_, f)| f.to_string()));
    }
    if protocol.min_reader_version() >= 3 {
        out.extend(protocol.reader_features().into_iter().flatten().map(|f| f.to_string()));
    } else if protocol.min_reader_version() == 2 {
        out.insert("columnMapping".into());
    }
    // Older names of features this writer knows.
    for (alias, name) in [("timestampWithoutTimezone", "timestampNtz"), ("liquid", "clustering")] {
        if out.remove(alias) {
            out.insert(name.into());
        }
    }
    out
}

fn truthy(metadata: &Metadata, key: &str) -> bool {
    metadata.configuration().get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Field metadata keys present anywhere in the schema (nested fields included).
fn field_metadata_keys(schema: &StructType, out: &mut BTreeSet<String>) {
    for field in schema.fields() {
        out.extend(field.metadata().keys().cloned());
        if let deltalake::kernel::DataType::Struct(inner) = field.data_type() {
            field_metadata_keys(inner, out);
        }
    }
}

/// Features no operation of this writer implements: a table that lists one is refused before it is even read.
const NEVER: &[&str] = &[
    "catalogManaged",
    "catalogOwned-preview",
    "icebergCompatV1",
    "icebergCompatV2",
    "icebergCompatV3",
    "collations",
    "collations-preview",
    "materializePartitionColumns",
];

/// A refusal read from a `protocol` action as JSON, for a table whose log the Delta kernel itself refuses to read
/// (a reader version it does not know, a catalog-managed table): the refusal then names the reason.
pub fn refusal_of_protocol_json(protocol: &serde_json::Value, operation: Operation) -> Option<Refusal> {
    let refuse = |feature: String, reason: &str| Some(Refusal { operation, feature, reason: reason.into() });
    let version = |k: &str| protocol.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
    let (reader, writer) = (version("minReaderVersion"), version("minWriterVersion"));
    if reader > 3 {
        return refuse(format!("reader version {reader}"), "newer than reader version 3, the newest this writer reads");
    }
    if writer > 7 {
        return refuse(
            format!("writer version {writer}"),
            "newer than writer version 7, the newest this writer writes",
        );
    }
    let names = ["readerFeatures", "writerFeatures"]
        .iter()
        .filter_map(|k| protocol.get(*k)?.as_array())
        .flatten()
        .filter_map(serde_json::Value::as_str);
    for name in names {
        if NEVER.contains(&name) {
            return refuse(name.into(), "a feature whose commits, files or layout this writer does not implement");
        }
        if !KNOWN.contains(&name) && name != "liquid" && name != "timestampWithoutTimezone" {
            return refuse(name.into(), "a feature this writer does not know");
        }
    }
    None
}

/// How the table maps column names to data file columns.
pub fn column_mapping(protocol: &Protocol, metadata: &Metadata) -> Result<ColumnMapping, Refusal> {
    let supported = features(protocol).contains("columnMapping");
    match metadata.configuration().get("delta.columnMapping.mode").map(|m| m.trim().to_ascii_lowercase()) {
        Some(m) if m == "name" && supported => Ok(ColumnMapping::Name),
        Some(m) if m == "id" && supported => Ok(ColumnMapping::Id),
        None => Ok(ColumnMapping::None),
        Some(m) if m == "none" => Ok(ColumnMapping::None),
        Some(m) => Err(Refusal {
            operation: Operation::Append,
            feature: "columnMapping".into(),
            reason: format!("mode {m:?} without the columnMapping feature in the protocol"),
        }),
    }
}

/// Whether the table lets `operation` be written, and the rules to follow when it does. `schema` is `metadata`'s,
/// parsed: a snapshot holds it so, and a writer asks before every commit, where parsing a wide table's schema
/// again would cost more than the rest of the check.
pub fn check(
    protocol: &Protocol,
    metadata: &Metadata,
    schema: &StructType,
    operation: Operation,
) -> Result<Rules, Refusal> {
    let refuse =
        |feature: &str, reason: &str| Refusal { operation, feature: feature.to_string(), reason: reason.into() };
    if protocol.min_reader_version() > 3 {
        let v = protocol.min_reader_version();
        return Err(refuse(
            &format!("reader version {v}"),
            "newer than reader version 3, the newest this writer reads",
        ));
    }
    if protocol.min_writer_version() > 7 {
        let v = protocol.min_writer_version();
        return Err(refuse(
            &format!("writer version {v}"),
            "newer than writer version 7, the newest this writer writes",
        ));
    }
    let features = features(protocol);
    if let Some(unknown) = features.iter().find(|f| !KNOWN.contains(&f.as_str())) {
        return Err(refuse(unknown, "a feature this writer does not know"));
    }
    let mut keys = BTreeSet::new();
    field_metadata_keys(schema, &mut keys);
    let config = metadata.configuration();
    let has = |f: &str| features.contains(f);
    let new_rows = operation.writes_new_rows();

    for f in ["catalogManaged", "catalogOwned-preview"] {
        if has(f) {
            return Err(refuse(f, "commits must go through the catalog's commit service, not the storage"));
        }
    }
    for f in ["icebergCompatV1", "icebergCompatV2", "icebergCompatV3"] {
        if has(f) {
            return Err(refuse(f, "Iceberg compatibility (UniForm) constrains every data file this writer writes"));
        }
    }
    for f in ["collations", "collations-preview"] {
        if has(f) {
            return Err(refuse(f, "collated string columns"));
        }
    }
    if has("materializePartitionColumns") {
        return Err(refuse("materializePartitionColumns", "partition values must be written into the data files"));
    }
    if has("invariants") && new_rows && keys.contains("delta.invariants") {
        return Err(refuse(
            "invariants",
            "a column has an invariant (delta.invariants), which every new row must satisfy",
        ));
    }
    if has("checkConstraints") && new_rows {
        let mut constraints: Vec<&String> = config.keys().filter(|k| k.starts_with("delta.constraints.")).collect();
        constraints.sort();
        if let Some(c) = constraints.first() {
            let name = c.trim_start_matches("delta.constraints.");
            return Err(refuse(
                "checkConstraints",
                &format!("CHECK constraint {name} ({}) must hold for every new row", config[*c]),
            ));
        }
    }
    if has("generatedColumns") && new_rows && keys.contains("delta.generationExpression") {
        return Err(refuse("generatedColumns", "a generated column's value must be computed for every new row"));
    }
    if has("identityColumns") && new_rows && keys.iter().any(|k| k.starts_with("delta.identity.")) {
        return Err(refuse("identityColumns", "an identity column must be given a fresh value for every new row"));
    }
    if has("allowColumnDefaults") && new_rows && keys.contains("CURRENT_DEFAULT") {
        return Err(refuse("allowColumnDefaults", "a column default must be evaluated for rows that do not set it"));
    }
    if has("changeDataFeed") && truthy(metadata, "delta.enableChangeDataFeed") && operation.removes_rows() {
        return Err(refuse("changeDataFeed", "rows removed from a file must also be written as change data"));
    }
    let row_tracking = has("rowTracking") && !truthy(metadata, "delta.rowTrackingSuspended");
    if row_tracking && operation.rewrites_files() {
        return Err(refuse("rowTracking", "rewritten rows must keep their row ids and commit versions"));
    }
    let append_only = has("appendOnly") && truthy(metadata, "delta.appendOnly");
    if append_only && operation.removes_rows() {
        return Err(refuse("appendOnly", "the table is append-only (delta.appendOnly): rows may not be removed"));
    }
    if operation.rewrites_files() {
        for f in ["typeWidening", "typeWidening-preview"] {
            if has(f) {
                return Err(refuse(f, "files written before a type change must be read with the old type"));
            }
        }
        for f in ["variantType", "variantType-preview", "variantShredding", "variantShredding-preview"] {
            if has(f) {
                return Err(refuse(f, "variant columns must be read and written in their own encoding"));
            }
        }
        if has("clustering") {
            return Err(refuse(
                "clustering",
                "a clustered table's files are laid out by its clustering implementation",
            ));
        }
    }
    if operation == Operation::LogCleanup && has("checkpointProtection") {
        return Err(refuse(
            "checkpointProtection",
            "old checkpoints are protected until every feature of their version is known",
        ));
    }
    let column_mapping = column_mapping(protocol, metadata).map_err(|r| Refusal { operation, ..r })?;
    let nested = schema.fields().any(|f| !matches!(f.data_type(), deltalake::kernel::DataType::Primitive(_)));
    if column_mapping != ColumnMapping::None && nested && operation.rewrites_files() {
        return Err(refuse("columnMapping", "nested columns under column mapping are rewritten only by Databricks"));
    }
    if column_mapping == ColumnMapping::None && keys.contains("delta.columnMapping.physicalName") {
        return Err(refuse("columnMapping", "columns carry physical names but column mapping is not enabled"));
    }
    Ok(Rules {
        column_mapping,
        in_commit_timestamps: has("inCommitTimestamp") && truthy(metadata, "delta.enableInCommitTimestamps"),
        row_tracking,
        append_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The check of a table given by its actions alone.
    fn check(protocol: &Protocol, metadata: &Metadata, operation: Operation) -> Result<Rules, Refusal> {
        super::check(protocol, metadata, &metadata.parse_schema().expect("a readable schema"), operation)
    }

    fn table(
        protocol: serde_json::Value,
        config: serde_json::Value,
        fields: serde_json::Value,
    ) -> (Protocol, Metadata) {
        let schema = json!({"type": "struct", "fields": fields}).to_string();
        let metadata = json!({"id": "t", "format": {"provider": "parquet", "options": {}}, "schemaString": schema,
            "partitionColumns": [], "configuration": config, "createdTime": 0});
        (serde_json::from_value(protocol).unwrap(), serde_json::from_value(metadata).unwrap())
    }

    fn plain() -> serde_json::Value {
        json!([{"name": "id", "type": "string", "nullable": true, "metadata": {}}])
    }

    fn refused(p: serde_json::Value, c: serde_json::Value, f: serde_json::Value, op: Operation) -> String {
        let (p, m) = table(p, c, f);
        check(&p, &m, op).unwrap_err().to_string()
    }

    #[test]
    fn legacy_tables_without_the_defined_things_are_written() {
        for writer in 2..=6 {
            let (p, m) = table(json!({"minReaderVersion": 1, "minWriterVersion": writer}), json!({}), plain());
            let rules = check(&p, &m, Operation::Append).unwrap_or_else(|e| panic!("writer {writer}: {e}"));
            assert_eq!(rules.column_mapping, ColumnMapping::None);
        }
    }

    #[test]
    fn defined_constraints_generated_and_identity_columns_refuse_new_rows() {
        let e = refused(
            json!({"minReaderVersion": 1, "minWriterVersion": 3}),
            json!({"delta.constraints.positive": "amount > 0"}),
            plain(),
            Operation::Append,
        );
        assert!(e.contains("checkConstraints") && e.contains("positive") && e.contains("amount > 0"), "{e}");
        let gen_field = json!([{"name": "d", "type": "long", "nullable": true, "metadata": {"delta.generationExpression": "id * 2"}}]);
        let e = refused(json!({"minReaderVersion": 1, "minWriterVersion": 4}), json!({}), gen_field, Operation::Append);
        assert!(e.contains("generatedColumns"), "{e}");
        let ident = json!([{"name": "n", "type": "long", "nullable": true, "metadata": {"delta.identity.start": 1, "delta.identity.step": 1}}]);
        let e =
            refused(json!({"minReaderVersion": 1, "minWriterVersion": 6}), json!({}), ident.clone(), Operation::Append);
        assert!(e.contains("identityColumns"), "{e}");
        // Compaction rewrites rows that were valid when written.
        let (p, m) = table(json!({"minReaderVersion": 1, "minWriterVersion": 6}), json!({}), ident);
        assert!(check(&p, &m, Operation::Compact).is_ok());
    }

    #[test]
    fn unknown_and_unimplemented_features_are_named() {
        let p = json!({"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": [], "writerFeatures": ["futureFeature"]});
        assert!(refused(p, json!({}), plain(), Operation::Append).contains("futureFeature"));
        let p = json!({"minReaderVersion": 3, "minWriterVersion": 7, "readerFeatures": ["catalogManaged"],
            "writerFeatures": ["catalogManaged", "inCommitTimestamp"]});
        assert!(refused(p, json!({}), plain(), Operation::Append).contains("catalogManaged"));
        let p = json!({"minReaderVersion": 1, "minWriterVersion": 8});
        assert!(refused(p, json!({}), plain(), Operation::Append).contains("writer version 8"));
        let p =
            json!({"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["rowTracking", "domainMetadata"]});
        assert!(refused(p.clone(), json!({}), plain(), Operation::Compact).contains("rowTracking"));
        let (p, m) = table(p, json!({}), plain());
        assert!(check(&p, &m, Operation::Append).unwrap().row_tracking);
    }

    #[test]
    fn append_only_refuses_removing_rows_only() {
        let p = json!({"minReaderVersion": 1, "minWriterVersion": 2});
        let c = json!({"delta.appendOnly": "true"});
        assert!(refused(p.clone(), c.clone(), plain(), Operation::Delete).contains("appendOnly"));
        let (p, m) = table(p, c, plain());
        assert!(check(&p, &m, Operation::Append).unwrap().append_only);
        assert!(check(&p, &m, Operation::Compact).is_ok());
    }

    #[test]
    fn column_mapping_modes() {
        let p = json!({"minReaderVersion": 2, "minWriterVersion": 5});
        let (pr, m) = table(p.clone(), json!({"delta.columnMapping.mode": "name"}), plain());
        assert_eq!(check(&pr, &m, Operation::Append).unwrap().column_mapping, ColumnMapping::Name);
        let (pr, m) = table(p, json!({"delta.columnMapping.mode": "id"}), plain());
        assert_eq!(check(&pr, &m, Operation::Append).unwrap().column_mapping, ColumnMapping::Id);
        // A mode the protocol does not back, and physical names without a mode, are both refused.
        let p = json!({"minReaderVersion": 1, "minWriterVersion": 2});
        assert!(
            refused(p.clone(), json!({"delta.columnMapping.mode": "name"}), plain(), Operation::Append)
                .contains("columnMapping")
        );
        let named = json!([{"name": "id", "type": "string", "nullable": true, "metadata": {"delta.columnMapping.physicalName": "col-1"}}]);
        assert!(refused(p, json!({}), named, Operation::Append).contains("columnMapping"));
    }

    #[test]
    fn in_commit_timestamps_when_enabled() {
        let p = json!({"minReaderVersion": 1, "minWriterVersion": 7, "writerFeatures": ["inCommitTimestamp"]});
        let (pr, m) = table(p.clone(), json!({"delta.enableInCommitTimestamps": "true"}), plain());
        assert!(check(&pr, &m, Operation::Append).unwrap().in_commit_timestamps);
        let (pr, m) = table(p, json!({}), plain());
        assert!(!check(&pr, &m, Operation::Append).unwrap().in_commit_timestamps);
    }
}
