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
        let parsed = Parser::parse_sql(&MsSqlDialect {}, &sql);
        assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
        checked += parsed.unwrap().len();
    }
    assert!(checked >= 8, "the migrations hold the schema's statements, parsed {checked}");
}
