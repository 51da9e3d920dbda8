//! Every SQL Server migration must parse as T-SQL: no SQL Server runs on our
//! machines, so this is their syntax check (the statements the code sends are
//! checked beside their table, in `mssql/sql.rs`).

use sqlparser::dialect::MsSqlDialect;
use sqlparser::parser::Parser;

#[test]
fn every_sql_server_migration_parses_as_tsql() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mssql");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let sql = std::fs::read_to_string(&path).unwrap();
        // Migrations hold no `;` inside a string or a comment, so statements
        // split on it; a procedure is alone in its file (CREATE PROCEDURE must
        // be alone in its batch) and parsed whole.
        let whole = without_comments(&sql);
        let routine = ["CREATE PROCEDURE", "ALTER PROCEDURE", "CREATE FUNCTION"].iter().any(|r| whole.starts_with(r));
        let statements: Vec<String> = match routine {
            true => vec![as_sqlparser_reads(&whole)],
            false => sql.split(';').map(without_comments).filter(|s| !s.is_empty()).collect(),
        };
        for statement in statements {
            assert!(!alters_a_column(&statement), "{}: {statement}: {ALTER_COLUMN}", path.display());
            let parsed = Parser::parse_sql(&MsSqlDialect {}, &statement);
            assert!(parsed.is_ok(), "{}: {statement}: {:?}", path.display(), parsed.err());
            checked += 1;
        }
    }
    assert!(checked >= 8, "the migrations hold the schema's statements, checked {checked}");
}

const ALTER_COLUMN: &str = "Babelfish (Aurora's SQL Server endpoint) refuses ALTER COLUMN with COLLATE or NOT NULL: \
     add a new column, copy, drop the old one and rename the new (V3__binary_keys.sql)";

fn without_comments(statement: &str) -> String {
    let lines = statement.lines().map(|l| l.split("--").next().unwrap_or("").trim());
    lines.filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// A routine's text, `ALTER PROCEDURE` read as `CREATE PROCEDURE`, with each `BEGIN TRY`, `END TRY`, `BEGIN CATCH` and
/// `END CATCH` written as a plain `BEGIN` or `END` block: sqlparser reads
/// `BEGIN TRY` as the start of a transaction, so a TRY/CATCH block could not
/// parse, though SQL Server's own grammar has it (and there `END TRY` takes
/// no `;` before `BEGIN CATCH`; sqlparser wants one after every block).
/// And `UPDATE TOP (n) t` is read as `UPDATE t`: sqlparser has no TOP in an
/// UPDATE, which SQL Server's grammar has (`UPDATE TOP ( expression )`).
/// Everything else is checked as written.
fn as_sqlparser_reads(routine: &str) -> String {
    // sqlparser has no ALTER PROCEDURE; its body is a CREATE PROCEDURE's.
    let routine = match routine.strip_prefix("ALTER PROCEDURE ") {
        Some(rest) => format!("CREATE PROCEDURE {rest}"),
        None => routine.to_string(),
    };
    let tokens: Vec<&str> = routine.split(' ').collect();
    let mut out: Vec<&str> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let pair = (tokens[i], tokens.get(i + 1).map(|t| t.trim_end_matches(';')));
        match pair {
            ("BEGIN", Some("TRY" | "CATCH")) => out.push("BEGIN"),
            ("END", Some("TRY" | "CATCH")) => out.push("END;"),
            ("UPDATE", Some("TOP")) if tokens.get(i + 2).is_some_and(|t| t.starts_with('(') && t.ends_with(')')) => {
                out.push("UPDATE");
                i += 3;
                continue;
            }
            _ => {
                out.push(tokens[i]);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out.join(" ")
}

/// `ALTER TABLE t ALTER COLUMN ...`, which some SQL Server engines refuse.
fn alters_a_column(statement: &str) -> bool {
    let upper: Vec<String> = statement.split_whitespace().map(|t| t.to_ascii_uppercase()).collect();
    upper.windows(2).any(|w| w[0] == "ALTER" && w[1] == "COLUMN")
}

#[test]
fn a_try_catch_block_is_read_as_plain_blocks_and_nothing_else_changes() {
    let routine = "AS BEGIN BEGIN TRY BEGIN TRANSACTION; SELECT 1; COMMIT TRANSACTION; END TRY \
                   BEGIN CATCH IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; THROW; END CATCH; END";
    assert_eq!(
        as_sqlparser_reads(routine),
        "AS BEGIN BEGIN BEGIN TRANSACTION; SELECT 1; COMMIT TRANSACTION; END; \
         BEGIN IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; THROW; END; END"
    );
}

#[test]
fn an_update_top_is_read_without_its_top_and_nothing_else_changes() {
    let statement = "AS BEGIN UPDATE TOP (@limit) dbo.t WITH (UPDLOCK, READPAST) SET a = 1 WHERE b IS NULL; \
                     SELECT TOP (5) a FROM dbo.t; END";
    assert_eq!(
        as_sqlparser_reads(statement),
        "AS BEGIN UPDATE dbo.t WITH (UPDLOCK, READPAST) SET a = 1 WHERE b IS NULL; SELECT TOP (5) a FROM dbo.t; END"
    );
}

#[test]
fn the_alter_column_check_can_fail() {
    assert!(!alters_a_column("ALTER TABLE dbo.t ADD c NVARCHAR(10) COLLATE Latin1_General_100_BIN2 NULL"));
    assert!(alters_a_column("ALTER TABLE dbo.t ALTER COLUMN c NVARCHAR(10) COLLATE Latin1_General_100_BIN2 NULL"));
    assert!(alters_a_column("alter table dbo.t alter column c nvarchar(200) not null"));
}
