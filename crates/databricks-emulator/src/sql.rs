//! The SQL the emulator understands, parsed with sqlparser's Databricks dialect.
//!
//! sqlparser 0.62 does not parse `CREATE TABLE ... USING DELTA LOCATION` without a column list, `ADD COLUMNS (...)`
//! or `DESCRIBE TABLE`, so those are read with its tokenizer and parser primitives; anything else goes through the
//! full parser only to tell a syntax error (`PARSE_SYNTAX_ERROR`) from valid SQL the emulator does not implement
//! (`UNSUPPORTED_BY_EMULATOR`).

use sqlparser::ast::{Expr, Ident, ObjectNamePart, SelectItem, SetExpr, Statement as Ast, Value};
use sqlparser::dialect::{DatabricksDialect, Dialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::errors::SqlError;

type R<T> = Result<T, SqlError>;

#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    CreateSchema { name: Vec<String>, if_not_exists: bool },
    CreateTable { name: Vec<String>, if_not_exists: bool, location: String },
    AddColumns { table: Vec<String>, columns: Vec<NewColumn> },
    Describe { table: Vec<String> },
    ShowTables { schema: Option<Vec<String>> },
    Select { items: Vec<Literal> },
    Optimize { table: Vec<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewColumn {
    pub name: String,
    /// The Delta type name: `string`, `long`, `double`, `boolean`, `timestamp`, `decimal(p,s)`, ...
    pub delta_type: String,
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Literal {
    pub name: String,
    pub value: LiteralValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LiteralValue {
    Number(String),
    Str(String),
    Bool(bool),
    Null,
    /// A named parameter marker `:name`, bound from the request's `parameters`.
    Param(String),
}

static DATABRICKS: DatabricksDialect = DatabricksDialect {};

/// Databricks' lexical rules as sqlparser's dialect has them, except that, as in Databricks SQL, a backslash
/// escapes the next character of a string literal (`'O\'Connell'`).
#[derive(Debug)]
struct Lexer;

impl Dialect for Lexer {
    fn dialect(&self) -> std::any::TypeId {
        DATABRICKS.dialect()
    }
    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        DATABRICKS.is_delimited_identifier_start(ch)
    }
    fn is_identifier_start(&self, ch: char) -> bool {
        DATABRICKS.is_identifier_start(ch)
    }
    fn is_identifier_part(&self, ch: char) -> bool {
        DATABRICKS.is_identifier_part(ch)
    }
    fn supports_numeric_prefix(&self) -> bool {
        DATABRICKS.supports_numeric_prefix()
    }
    fn supports_nested_comments(&self) -> bool {
        DATABRICKS.supports_nested_comments()
    }
    fn supports_string_literal_backslash_escape(&self) -> bool {
        true
    }
}

/// A parser over `sql` tokenized by [`Lexer`], with the Databricks dialect for everything else.
fn parser(sql: &str) -> R<Parser<'static>> {
    let tokens = Tokenizer::new(&Lexer, sql)
        .with_unescape(true)
        .tokenize_with_location()
        .map_err(|e| from_parser(ParserError::TokenizerError(e.to_string())))?;
    Ok(Parser::new(&DATABRICKS).with_tokens_with_locations(tokens))
}

fn parse_all(sql: &str) -> Result<Vec<Ast>, ParserError> {
    match parser(sql) {
        Ok(mut p) => p.parse_statements(),
        Err(_) => Parser::parse_sql(&DATABRICKS, sql),
    }
}

pub fn parse(sql: &str) -> R<Stmt> {
    let mut p = parser(sql)?;
    let stmt = if p.parse_keyword(Keyword::CREATE) {
        match p.parse_one_of_keywords(&[Keyword::SCHEMA, Keyword::DATABASE, Keyword::TABLE]) {
            Some(Keyword::TABLE) => create_table(&mut p)?,
            Some(_) => create_schema(&mut p)?,
            None => return Err(fallback(sql)),
        }
    } else if p.parse_keywords(&[Keyword::ALTER, Keyword::TABLE]) {
        alter_table(&mut p, sql)?
    } else if p.parse_one_of_keywords(&[Keyword::DESCRIBE, Keyword::DESC]).is_some() {
        describe(&mut p)?
    } else if p.parse_keywords(&[Keyword::SHOW, Keyword::TABLES]) {
        show_tables(&mut p)?
    } else if p.parse_keyword(Keyword::OPTIMIZE) {
        optimize(&mut p)?
    } else if p.peek_keyword(Keyword::SELECT) {
        return select(sql);
    } else {
        return Err(fallback(sql));
    };
    let _ = p.consume_token(&Token::SemiColon);
    let next = p.peek_token();
    if next.token != Token::EOF {
        return Err(unexpected(&next));
    }
    Ok(stmt)
}

/// Turns sqlparser's "Expected: ..., found: X at Line: l, Column: c" into Databricks' syntax error.
fn from_parser(e: ParserError) -> SqlError {
    let text = e.to_string();
    if let Some(i) = text.rfind("found: ") {
        let rest = &text[i + "found: ".len()..];
        let (near, pos) = rest.rsplit_once(" at Line: ").unwrap_or((rest, "1, Column: 1"));
        let (line, column) = pos.split_once(", Column: ").unwrap_or(("1", "1"));
        return SqlError::syntax(near, line.trim().parse().unwrap_or(1), column.trim().parse().unwrap_or(1));
    }
    let text = text.trim_start_matches("sql parser error: ");
    SqlError::new("PARSE_SYNTAX_ERROR", "BAD_REQUEST", "42601", format!("Syntax error: {text}."))
}

fn unexpected(t: &TokenWithSpan) -> SqlError {
    SqlError::syntax(&t.token.to_string(), t.span.start.line.max(1), t.span.start.column.max(1))
}

/// For statements outside the emulator's grammar: valid SQL is reported as not implemented, anything else as
/// the syntax error sqlparser finds.
fn fallback(sql: &str) -> SqlError {
    match parse_all(sql) {
        Ok(stmts) if !stmts.is_empty() => {
            let head: Vec<String> = sql.split_whitespace().take(2).map(|w| w.to_ascii_uppercase()).collect();
            SqlError::unsupported(head.join(" "))
        }
        Ok(_) => SqlError::syntax("EOF", 1, 1),
        Err(e) => from_parser(e),
    }
}

/// The next token when it is an unquoted word, upper-cased, without consuming it.
fn peek_word(p: &Parser) -> Option<String> {
    match p.peek_token().token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// An unquoted identifier may hold only ASCII letters, digits and `_`, and must not start with a digit.
fn ident(id: &Ident) -> R<String> {
    let v = &id.value;
    let valid = v.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if id.quote_style.is_none() && !valid {
        return Err(SqlError::new(
            "INVALID_IDENTIFIER",
            "BAD_REQUEST",
            "42602",
            format!(
                "The unquoted identifier {v} is invalid and must be back quoted as: `{}`. Unquoted identifiers \
                 contain only ASCII letters, digits and '_', and do not start with a digit.",
                v.replace('`', "``")
            ),
        ));
    }
    Ok(v.clone())
}

fn name(p: &mut Parser) -> R<Vec<String>> {
    let object = p.parse_object_name(false).map_err(from_parser)?;
    object
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) => ident(id),
            _ => Err(SqlError::unsupported("IDENTIFIER(...)")),
        })
        .collect()
}

fn string(p: &mut Parser) -> R<String> {
    p.parse_literal_string().map_err(from_parser)
}

fn create_schema(p: &mut Parser) -> R<Stmt> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = name(p)?;
    if let Some(w) =
        peek_word(p).filter(|w| ["COMMENT", "LOCATION", "MANAGED", "WITH", "DEFAULT"].contains(&w.as_str()))
    {
        return Err(SqlError::unsupported(format!("CREATE SCHEMA ... {w}")));
    }
    Ok(Stmt::CreateSchema { name, if_not_exists })
}

/// `CREATE TABLE [IF NOT EXISTS] name [USING DELTA] LOCATION '<uri>'`: the provider comes first, as in Spark's
/// grammar; the schema is read from the Delta log at the location.
fn create_table(p: &mut Parser) -> R<Stmt> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = name(p)?;
    if p.peek_token().token == Token::LParen {
        return Err(SqlError::unsupported("CREATE TABLE with a column list"));
    }
    if p.parse_keyword(Keyword::USING) {
        let provider = p.parse_identifier().map_err(from_parser)?;
        if !provider.value.eq_ignore_ascii_case("delta") {
            return Err(SqlError::unsupported(format!("CREATE TABLE ... USING {}", provider.value)));
        }
    }
    let mut location = None;
    loop {
        if p.parse_keyword(Keyword::LOCATION) {
            if location.is_some() {
                return Err(SqlError::new(
                    "DUPLICATE_CLAUSES",
                    "BAD_REQUEST",
                    "42614",
                    "Found duplicate clauses: LOCATION. Please, remove one of them.",
                ));
            }
            location = Some(string(p)?);
        } else if let Some(w) = peek_word(p).filter(|w| {
            ["COMMENT", "TBLPROPERTIES", "PARTITIONED", "CLUSTER", "OPTIONS", "AS", "WITH"].contains(&w.as_str())
        }) {
            return Err(SqlError::unsupported(format!("CREATE TABLE ... {w}")));
        } else {
            break;
        }
    }
    let location = location.ok_or_else(|| SqlError::unsupported("A managed table (CREATE TABLE without LOCATION)"))?;
    Ok(Stmt::CreateTable { name, if_not_exists, location })
}

/// `ALTER TABLE name ADD {COLUMN | COLUMNS} [(] col type [COMMENT '...'] [, ...] [)]`.
fn alter_table(p: &mut Parser, sql: &str) -> R<Stmt> {
    let table = name(p)?;
    if !p.parse_keyword(Keyword::ADD) || p.parse_one_of_keywords(&[Keyword::COLUMN, Keyword::COLUMNS]).is_none() {
        return Err(fallback(sql));
    }
    let parens = p.consume_token(&Token::LParen);
    let mut columns = vec![column(p)?];
    while p.consume_token(&Token::Comma) {
        columns.push(column(p)?);
    }
    if parens {
        p.expect_token(&Token::RParen).map_err(from_parser)?;
    }
    Ok(Stmt::AddColumns { table, columns })
}

fn column(p: &mut Parser) -> R<NewColumn> {
    let id = p.parse_identifier().map_err(from_parser)?;
    let name = ident(&id)?;
    if p.peek_token().token == Token::Period {
        return Err(SqlError::unsupported("Adding a nested field"));
    }
    let data_type = p.parse_data_type().map_err(from_parser)?;
    let delta_type = delta_type(&data_type.to_string())?;
    let mut comment = None;
    loop {
        if p.parse_keyword(Keyword::COMMENT) {
            comment = Some(string(p)?);
        } else if let Some(w) = peek_word(p)
            .filter(|w| ["NOT", "DEFAULT", "FIRST", "AFTER", "MASK", "GENERATED", "COLLATE"].contains(&w.as_str()))
        {
            return Err(SqlError::unsupported(format!("ADD COLUMNS ... {w}")));
        } else {
            break;
        }
    }
    Ok(NewColumn { name, delta_type, comment })
}

/// Databricks SQL type → Delta type name, for the types the emulator adds.
pub fn delta_type(sql_type: &str) -> R<String> {
    let t = sql_type.trim().to_ascii_uppercase();
    let simple = match t.as_str() {
        "STRING" => Some("string"),
        "BIGINT" | "LONG" => Some("long"),
        "INT" | "INTEGER" => Some("integer"),
        "SMALLINT" | "SHORT" => Some("short"),
        "TINYINT" | "BYTE" => Some("byte"),
        "DOUBLE" | "DOUBLE PRECISION" => Some("double"),
        "FLOAT" | "REAL" => Some("float"),
        "BOOLEAN" => Some("boolean"),
        "TIMESTAMP" | "TIMESTAMP_LTZ" => Some("timestamp"),
        "DATE" => Some("date"),
        "BINARY" => Some("binary"),
        "DECIMAL" | "DEC" | "NUMERIC" => Some("decimal(10,0)"),
        _ => None,
    };
    if let Some(s) = simple {
        return Ok(s.to_string());
    }
    let decimal = ["DECIMAL(", "DEC(", "NUMERIC("].iter().find_map(|pre| t.strip_prefix(pre));
    if let Some(args) = decimal.and_then(|rest| rest.strip_suffix(')')) {
        let mut nums = args.split(',').map(|s| s.trim().parse::<u32>());
        let (precision, scale) = match (nums.next(), nums.next(), nums.next()) {
            (Some(Ok(p)), None, None) => (p, 0),
            (Some(Ok(p)), Some(Ok(s)), None) => (p, s),
            _ => return Err(unsupported_type(sql_type)),
        };
        if !(1..=38).contains(&precision) || scale > precision {
            return Err(SqlError::new(
                "DECIMAL_PRECISION_EXCEEDS_MAX_PRECISION",
                "BAD_REQUEST",
                "22003",
                format!("Decimal precision {precision} exceeds max precision 38 or is below its scale {scale}."),
            ));
        }
        return Ok(format!("decimal({precision},{scale})"));
    }
    let known_complex = ["ARRAY", "STRUCT", "MAP", "VARCHAR", "CHAR", "TIMESTAMP_NTZ", "INTERVAL", "VARIANT"];
    if known_complex.iter().any(|k| t.starts_with(k)) {
        return Err(SqlError::unsupported(format!("Adding a column of type {t}")));
    }
    Err(unsupported_type(sql_type))
}

fn unsupported_type(sql_type: &str) -> SqlError {
    SqlError::new("UNSUPPORTED_DATATYPE", "BAD_REQUEST", "0A000", format!("Unsupported data type \"{sql_type}\"."))
}

fn describe(p: &mut Parser) -> R<Stmt> {
    let _ = p.parse_keyword(Keyword::TABLE);
    let other = ["EXTENDED", "FORMATTED", "HISTORY", "DETAIL", "QUERY", "FUNCTION", "SCHEMA", "DATABASE", "CATALOG"];
    if let Some(w) = peek_word(p).filter(|w| other.contains(&w.as_str())) {
        return Err(SqlError::unsupported(format!("DESCRIBE {w}")));
    }
    Ok(Stmt::Describe { table: name(p)? })
}

/// `OPTIMIZE name`; a `WHERE` or `ZORDER BY` is valid Databricks SQL the emulator does not implement.
fn optimize(p: &mut Parser) -> R<Stmt> {
    let table = name(p)?;
    if let Some(w) = peek_word(p).filter(|w| w == "WHERE" || w == "ZORDER") {
        return Err(SqlError::unsupported(format!("OPTIMIZE ... {w}")));
    }
    Ok(Stmt::Optimize { table })
}

fn show_tables(p: &mut Parser) -> R<Stmt> {
    let schema = match p.parse_one_of_keywords(&[Keyword::IN, Keyword::FROM]) {
        Some(_) => Some(name(p)?),
        None => None,
    };
    if p.parse_keyword(Keyword::LIKE) || matches!(p.peek_token().token, Token::SingleQuotedString(_)) {
        return Err(SqlError::unsupported("SHOW TABLES with a pattern"));
    }
    Ok(Stmt::ShowTables { schema })
}

/// `SELECT <literal> [AS alias], ...` with no FROM: enough for a connectivity check.
fn select(sql: &str) -> R<Stmt> {
    let stmts = parse_all(sql).map_err(from_parser)?;
    let [Ast::Query(query)] = stmts.as_slice() else {
        return Err(SqlError::syntax(";", 1, 1));
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(SqlError::unsupported("This SELECT"));
    };
    if !select.from.is_empty() || select.selection.is_some() || query.limit_clause.is_some() {
        return Err(SqlError::unsupported("SELECT with FROM, WHERE or LIMIT"));
    }
    let mut items = Vec::new();
    for item in &select.projection {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(ident(alias)?)),
            _ => return Err(SqlError::unsupported("SELECT of anything but literals")),
        };
        let Expr::Value(v) = expr else {
            return Err(SqlError::unsupported("SELECT of anything but literals"));
        };
        let value = match &v.value {
            Value::Number(n, _) => LiteralValue::Number(n.to_string()),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => LiteralValue::Str(s.clone()),
            Value::Boolean(b) => LiteralValue::Bool(*b),
            Value::Null => LiteralValue::Null,
            Value::Placeholder(m) if m.starts_with(':') => LiteralValue::Param(m[1..].to_string()),
            _ => return Err(SqlError::unsupported("This literal")),
        };
        let name = alias.unwrap_or_else(|| match &value {
            LiteralValue::Str(s) => s.clone(),
            LiteralValue::Param(n) => format!(":{n}"),
            _ => v.value.to_string(),
        });
        items.push(Literal { name, value });
    }
    Ok(Stmt::Select { items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(sql: &str) -> String {
        parse(sql).unwrap_err().class
    }

    #[test]
    fn the_projects_ddl_parses() {
        let s = parse("CREATE SCHEMA IF NOT EXISTS `main`.`web`").unwrap();
        assert_eq!(s, Stmt::CreateSchema { name: vec!["main".into(), "web".into()], if_not_exists: true });
        let s = parse("CREATE TABLE IF NOT EXISTS `main`.`web`.`tracks` USING DELTA LOCATION 'abfss://l@a/web/t';")
            .unwrap();
        let Stmt::CreateTable { location, .. } = s else { panic!("{s:?}") };
        assert_eq!(location, "abfss://l@a/web/t");
        let s =
            parse("ALTER TABLE `main`.`web`.`tracks` ADD COLUMNS (`plan` STRING, `a``b` BIGINT COMMENT 'c')").unwrap();
        let Stmt::AddColumns { columns, .. } = s else { panic!("{s:?}") };
        assert_eq!(columns[1], NewColumn { name: "a`b".into(), delta_type: "long".into(), comment: Some("c".into()) });
    }

    #[test]
    fn types_map_to_delta() {
        for (sql, delta) in [
            ("STRING", "string"),
            ("BIGINT", "long"),
            ("DOUBLE", "double"),
            ("BOOLEAN", "boolean"),
            ("TIMESTAMP", "timestamp"),
            ("DECIMAL(12,2)", "decimal(12,2)"),
        ] {
            let s = parse(&format!("ALTER TABLE t ADD COLUMN c {sql}")).unwrap();
            let Stmt::AddColumns { columns, .. } = s else { panic!() };
            assert_eq!(columns[0].delta_type, delta, "{sql}");
        }
        assert_eq!(class("ALTER TABLE t ADD COLUMN c TEXT"), "UNSUPPORTED_DATATYPE");
    }

    #[test]
    fn identifiers_and_errors() {
        assert_eq!(class("ALTER TABLE t ADD COLUMNS (2fa_enabled BOOLEAN)"), "INVALID_IDENTIFIER");
        assert!(parse("ALTER TABLE t ADD COLUMNS (`2fa_enabled` BOOLEAN)").is_ok());
        assert_eq!(class("ALTER TABLE t ADD COLUMNS (plan-name STRING)"), "PARSE_SYNTAX_ERROR");
        assert_eq!(class("CREATE TABLE t LOCATION 'x' USING DELTA"), "PARSE_SYNTAX_ERROR");
        assert_eq!(class("SELEC 1"), "PARSE_SYNTAX_ERROR");
        assert_eq!(class("DROP TABLE t"), "UNSUPPORTED_BY_EMULATOR");
        assert_eq!(class("CREATE TABLE t (a INT) USING DELTA"), "UNSUPPORTED_BY_EMULATOR");
        let e = parse("ALTER TABLE t ADD COLUMNS (a STRING").unwrap_err();
        assert!(e.message.starts_with("[PARSE_SYNTAX_ERROR] Syntax error at or near end of input."), "{e:?}");
    }

    #[test]
    fn select_literals() {
        let Stmt::Select { items } = parse("SELECT 1, 'x' AS y, :p").unwrap() else { panic!() };
        assert_eq!(items[0], Literal { name: "1".into(), value: LiteralValue::Number("1".into()) });
        assert_eq!(items[1].name, "y");
        assert_eq!(items[2].value, LiteralValue::Param("p".into()));
    }

    #[test]
    fn optimize() {
        let s = parse("OPTIMIZE `main`.`web`.`pages`").unwrap();
        assert_eq!(s, Stmt::Optimize { table: vec!["main".into(), "web".into(), "pages".into()] });
        assert_eq!(class("OPTIMIZE main.web.pages ZORDER BY (id)"), "UNSUPPORTED_BY_EMULATOR");
        assert_eq!(class("OPTIMIZE main.web.pages; DROP TABLE x"), "PARSE_SYNTAX_ERROR");
    }

    #[test]
    fn backslash_escapes_in_string_literals() {
        let s = parse("CREATE TABLE IF NOT EXISTS t USING DELTA LOCATION '/lake/it\\'s \\\\ here'").unwrap();
        let Stmt::CreateTable { location, .. } = s else { panic!("{s:?}") };
        assert_eq!(location, "/lake/it's \\ here");
    }
}
