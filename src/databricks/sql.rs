//! SQL text for the DDL the loader runs. Identifiers come only from normalised names and are always
//! backtick-quoted, with a backtick inside a name doubled.

use crate::layout::value::ColumnType;

pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

pub fn table_name(catalog: &str, schema: &str, table: &str) -> String {
    format!("{}.{}.{}", ident(catalog), ident(schema), ident(table))
}

/// A string literal; storage URIs never need more than doubling a quote and escaping a backslash.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

pub fn create_schema(catalog: &str, schema: &str) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}.{}", ident(catalog), ident(schema))
}

pub fn create_table(catalog: &str, schema: &str, table: &str, location: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} USING DELTA LOCATION {}",
        table_name(catalog, schema, table),
        literal(location)
    )
}

pub fn add_columns(catalog: &str, schema: &str, table: &str, columns: &[(String, ColumnType)]) -> String {
    let cols: Vec<String> = columns.iter().map(|(n, t)| format!("{} {}", ident(n), t.sql_name())).collect();
    format!("ALTER TABLE {} ADD COLUMNS ({})", table_name(catalog, schema, table), cols.join(", "))
}

/// Databricks' own compaction of a table (bin-packing to its target file size).
pub fn optimize(catalog: &str, schema: &str, table: &str) -> String {
    format!("OPTIMIZE {}", table_name(catalog, schema, table))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_cannot_break_out() {
        assert_eq!(ident("a`b; DROP TABLE x --"), "`a``b; DROP TABLE x --`");
        assert_eq!(ident("2fa_enabled"), "`2fa_enabled`");
        assert_eq!(
            add_columns(
                "main",
                "web",
                "tracks",
                &[("plan".into(), ColumnType::String), ("seats".into(), ColumnType::BigInt)]
            ),
            "ALTER TABLE `main`.`web`.`tracks` ADD COLUMNS (`plan` STRING, `seats` BIGINT)"
        );
        assert_eq!(
            create_table("main", "web", "tracks", "abfss://lake@acct.dfs.core.windows.net/web/tracks"),
            "CREATE TABLE IF NOT EXISTS `main`.`web`.`tracks` USING DELTA LOCATION 'abfss://lake@acct.dfs.core.windows.net/web/tracks'"
        );
        assert_eq!(literal("it's"), "'it\\'s'");
    }
}
