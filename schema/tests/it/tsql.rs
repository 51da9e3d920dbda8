//! Every SQL Server statement the code sends, and every migration, must parse
//! as T-SQL: no SQL Server runs on our machines, so this is their syntax check.

use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

#[test]
fn every_sql_server_statement_parses_as_tsql() {
    let statements = schema::mssql_statements();
    assert!(statements.len() >= 20, "the statement table lists every statement");
    let failures: Vec<String> = statements
        .iter()
        .filter_map(|(name, sql)| {
            Parser::parse_sql(&MsSqlDialect {}, sql).err().map(|e| format!("{name}: {e}\n  {sql}"))
        })
        .collect();
    assert!(failures.is_empty(), "statements that do not parse:\n{}", failures.join("\n"));
}

#[test]
fn every_sql_server_migration_parses_as_tsql() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mssql");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        // Migrations hold no `;` inside a string, so statements split on it.
        for statement in sql.split(';').map(without_comments).filter(|s| !s.is_empty()) {
            match alter_column(&statement) {
                Some(shape) => assert!(shape.is_ok(), "{}: {statement}: {:?}", path.display(), shape),
                None => {
                    let parsed = Parser::parse_sql(&MsSqlDialect {}, &statement);
                    assert!(parsed.is_ok(), "{}: {statement}: {:?}", path.display(), parsed.err());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "the migrations hold the schema's statements, checked {checked}");
}

fn without_comments(statement: &str) -> String {
    let lines = statement.lines().map(|l| l.split("--").next().unwrap_or("").trim());
    lines.filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// sqlparser does not know T-SQL's `ALTER TABLE t ALTER COLUMN c TYPE [COLLATE x] [NOT] NULL`,
/// so that one shape is checked here token by token. `None` for any other statement.
fn alter_column(statement: &str) -> Option<Result<(), String>> {
    let tokens: Vec<&str> = statement.split_whitespace().collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    if upper.len() < 4 || upper[0] != "ALTER" || upper[1] != "TABLE" || upper[3] != "ALTER" {
        return None;
    }
    let ident =
        |t: &str| t.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    let data_type = |t: &str| {
        let (name, size) = t.split_once('(').map_or((t, None), |(n, s)| (n, Some(s)));
        ["NVARCHAR", "VARCHAR", "INT", "BIGINT", "DATETIME2"].contains(&name.to_ascii_uppercase().as_str())
            && size.is_none_or(|s| s.strip_suffix(')').is_some_and(|n| n == "MAX" || n.parse::<u32>().is_ok()))
    };
    let rest: Vec<&str> = upper[4..].iter().map(String::as_str).collect();
    let ok = match rest.as_slice() {
        ["COLUMN", _, _, "COLLATE", _, "NULL"] | ["COLUMN", _, _, "COLLATE", _, "NOT", "NULL"] => {
            ident(tokens[5]) && data_type(tokens[6]) && ident(tokens[8])
        }
        ["COLUMN", _, _, "NULL"] | ["COLUMN", _, _, "NOT", "NULL"] => ident(tokens[5]) && data_type(tokens[6]),
        _ => false,
    };
    Some(if ok && ident(tokens[2]) { Ok(()) } else { Err("not a T-SQL ALTER COLUMN".into()) })
}

#[test]
fn the_alter_column_check_can_fail() {
    assert_eq!(alter_column("SELECT 1"), None);
    assert!(
        alter_column("ALTER TABLE dbo.t ALTER COLUMN c NVARCHAR(10) COLLATE Latin1_General_100_BIN2 NULL")
            .unwrap()
            .is_ok()
    );
    assert!(alter_column("ALTER TABLE dbo.t ALTER COLUMN c NVARCHAR(10 NULL").unwrap().is_err());
    assert!(alter_column("ALTER TABLE dbo.t ALTER COLUMN c NVARCHAR(10) COLLATE NULL").unwrap().is_err());
}
