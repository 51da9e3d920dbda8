//! The conventions that matter, as tests (rust-analyzer's `tidy.rs` is the
//! model): each reads the workspace's files as text and fails naming every
//! file that breaks its rule, and what to do instead.
//!
//! Invariant: the checks find files by walking the tree, never from a list, so
//! a new file or crate is checked the day it is added.

#![cfg(test)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crates that talk to a database: only `schema` names them.
const DRIVERS: [&str; 4] = ["rusqlite", "tiberius", "deadpool_sqlite", "refinery"];

/// The only files that hold SQL: each backend's statement table.
const STATEMENT_TABLES: [&str; 2] = ["schema/src/sqlite/sql.rs", "schema/src/mssql/sql.rs"];

/// The words an SQL statement or batch starts with, in either dialect.
const SQL_WORDS: [&str; 21] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "EXEC",
    "EXECUTE",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "PRAGMA",
    "WITH",
    "SET",
    "DECLARE",
    "IF",
];

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let offenders = files("rs").into_iter().filter(|path| !read(path).starts_with("//!")).map(|p| shown(&p)).collect();
    fail_on(
        "these files do not start with `//!`",
        "open each with a `//!` comment: what the module is for and the invariant it keeps",
        offenders,
    );
}

#[test]
fn no_database_driver_is_named_outside_schema() {
    let mut offenders = Vec::new();
    // This file names them too, in the examples of its own test below.
    let here = root().join("tidy/src/lib.rs");
    for path in files("rs").into_iter().filter(|p| !in_schema(p) && *p != here) {
        for (n, line) in read(&path).lines().enumerate() {
            for driver in DRIVERS.iter().filter(|d| names_crate(line, d)) {
                offenders.push(format!("{}:{}: {driver}", shown(&path), n + 1));
            }
        }
    }
    for path in manifests().into_iter().filter(|p| !in_schema(p) && *p != root().join("Cargo.toml")) {
        for (n, line) in read(&path).lines().enumerate() {
            for driver in DRIVERS.iter().filter(|d| depends_on(line, &d.replace('_', "-"))) {
                offenders.push(format!("{}:{}: {driver}", shown(&path), n + 1));
            }
        }
    }
    fail_on(
        "a database driver is used outside `schema`",
        "go through `schema`: its store traits, or `schema::testing::Probe` in tests (`hold_write_lock`, `tally`, ...)",
        offenders,
    );
}

#[test]
fn no_sql_string_lives_outside_the_statement_tables() {
    // This file holds SQL too, in the samples of its own test below.
    let here = root().join("tidy/src/lib.rs");
    let tables: Vec<PathBuf> = STATEMENT_TABLES.iter().map(|t| root().join(t)).collect();
    let mut offenders = Vec::new();
    for path in files("rs").into_iter().filter(|p| *p != here && !tables.contains(p) && !is_test_file(p)) {
        for (n, word) in sql_strings(&read(&path)) {
            offenders.push(format!("{}:{}: a string starting with {word}", shown(&path), n + 1));
        }
    }
    fail_on(
        "SQL outside the statement tables (`schema/src/{sqlite,mssql}/sql.rs`)",
        "declare the statement in its backend's `statements!` table, under the name its twin has on the other \
         side, and use the constant (tests may hold SQL of their own)",
        offenders,
    );
}

#[test]
fn no_sql_text_is_built_from_a_value() {
    let tables: Vec<PathBuf> = STATEMENT_TABLES.iter().map(|t| root().join(t)).collect();
    let names: BTreeSet<String> = tables.iter().flat_map(|t| statement_names(&read(t))).collect();
    let mut offenders = Vec::new();
    for path in tables.iter() {
        for (n, marker) in template_markers(&read(path)) {
            offenders.push(format!(
                "{}:{}: a statement holds {marker}, a place a value is put into",
                shown(path),
                n + 1
            ));
        }
    }
    for path in files("rs").into_iter().filter(|p| !is_test_file(p)) {
        for (n, what) in built_statements(&read(&path), &names) {
            offenders.push(format!("{}:{}: {what}", shown(&path), n + 1));
        }
    }
    fail_on(
        "SQL text built from a value (a statement formatted, replaced into or appended to)",
        "send every value as a parameter (`@P1`, `?1`); several rows go as one JSON or list parameter that a \
         procedure reads, its texts carried (`schema/src/mssql/carried.rs`)",
        offenders,
    );
}

/// The names a statement table declares (`NAME = ...` inside `statements!`).
fn statement_names(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|line| line.trim_start().split_once(" = ").map(|(name, _)| name))
        .filter(|name| name.len() > 1 && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// The lines of a statement table's code holding a template marker: an
/// `@` followed by an upper-case word that is no parameter (`@P1`), such as
/// `@JSON` or `@LIMIT`, which only a text replacement can fill.
fn template_markers(table: &str) -> Vec<(usize, String)> {
    code_lines(table)
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .flat_map(|(n, line)| {
            line.match_indices('@')
                .filter(|(at, _)| !line[..*at].ends_with('@'))
                .filter_map(|(at, _)| {
                    let word: String =
                        line[at + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let parameter =
                        word.strip_prefix('P').is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
                    let upper = word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
                    (upper && !parameter).then(|| format!("@{word}"))
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(move |marker| (n, marker))
        })
        .collect()
}

/// The lines of a Rust file's code (before its unit tests) that build a
/// string from a statement: a statement constant (one of `names`) on the
/// same line as `format!`, `.replace(`, `.replacen(`, `push_str(` or `+ &`.
fn built_statements(text: &str, names: &BTreeSet<String>) -> Vec<(usize, String)> {
    const BUILDERS: [&str; 6] = ["format!(", "write!(", ".replace(", ".replacen(", "push_str(", " + &"];
    code_lines(text)
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter_map(|(n, line)| {
            let builder = BUILDERS.iter().find(|b| line.contains(**b))?;
            let named = names.iter().find(|name| {
                line.match_indices(name.as_str()).any(|(at, _)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + name.len()..].chars().next();
                    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                    !word(before) && !word(after)
                })
            })?;
            Some((n, format!("{named} goes through `{}`", builder.trim())))
        })
        .collect()
}

/// A file's lines of code, numbered from 0: those before its unit tests.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let tests = |w: &[&str]| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests");
    let code = lines.windows(2).position(tests).unwrap_or(lines.len());
    lines.into_iter().take(code).enumerate()
}

#[test]
fn every_contract_test_runs_on_both_backends() {
    let dir = root().join("schema/tests/it");
    let contract = read(&dir.join("contract.rs"));
    let mut written = BTreeSet::new();
    for file in ["contract.rs", "incidents.rs"] {
        for line in read(&dir.join(file)).lines() {
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                written.insert(rest.split('(').next().unwrap_or_default().to_string());
            }
        }
    }
    let (mut backends, mut listed) = (BTreeSet::new(), BTreeSet::new());
    for call in contract.split("contract_tests!(").skip(1) {
        let body = call.split(')').next().unwrap_or_default();
        match body.trim_start().strip_prefix("@each") {
            Some(each) => {
                let names = each.split_once(';').map_or("", |(_, names)| names);
                listed.extend(names.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()));
            }
            None => {
                backends.insert(body.split(',').next().unwrap_or_default().trim().to_string());
            }
        }
    }
    assert_eq!(
        backends,
        BTreeSet::from(["mssql".to_string(), "sqlite".to_string()]),
        "schema/tests/it/contract.rs: `contract_tests!` is expanded once for each backend"
    );
    fail_on(
        "these contract tests are written but not in the list of `contract_tests!` (schema/tests/it/contract.rs)",
        "add each to the list, which expands it for SQLite and SQL Server alike",
        written.difference(&listed).cloned().collect(),
    );
    fail_on(
        "`contract_tests!` lists these, but no `pub async fn` of the contract has the name",
        "remove each from the list, or make the test `pub async fn`",
        listed.difference(&written).cloned().collect(),
    );
}

#[test]
fn every_member_takes_the_workspace_lints() {
    // The root is the workspace, and `fuzz/` a workspace of its own for `cargo fuzz`.
    let not_members = [root().join("Cargo.toml"), root().join("fuzz/Cargo.toml")];
    let offenders = manifests()
        .into_iter()
        .filter(|p| !not_members.contains(p))
        .filter(|p| !read(p).contains("[lints]\nworkspace = true"))
        .map(|p| shown(&p))
        .collect();
    fail_on(
        "these crates do not take the workspace's lints",
        "add `[lints]` with `workspace = true` (allow a lint in the crate's source, saying why)",
        offenders,
    );
}

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tidy lives one level below the root").to_path_buf()
}

/// Every file ending in `.{ext}` below the root, but in build output and hidden folders.
fn files(ext: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root()];
    while let Some(dir) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found
}

/// Every `Cargo.toml` below the root.
fn manifests() -> Vec<PathBuf> {
    files("toml").into_iter().filter(|p| p.ends_with("Cargo.toml")).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn in_schema(path: &Path) -> bool {
    path.starts_with(root().join("schema"))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

/// Whether a line of Rust code names `krate`: in a path (`krate::`) or a `use`.
fn names_crate(line: &str, krate: &str) -> bool {
    let code = line.trim_start();
    if code.starts_with("//") {
        return false;
    }
    let used = ["use ", "pub use ", "extern crate "].iter().any(|u| {
        code.strip_prefix(u).and_then(|rest| rest.strip_prefix(krate)).is_some_and(|r| r.starts_with([':', ' ', ';']))
    });
    let path = format!("{krate}::");
    used || code.match_indices(&path).any(|(at, _)| !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// Whether a line of a manifest declares a dependency on `krate`.
fn depends_on(line: &str, krate: &str) -> bool {
    let line = line.trim();
    let key = line.strip_prefix(krate).is_some_and(|rest| rest.starts_with(['.', ' ', '=']));
    key || line.ends_with(&format!("dependencies.{krate}]"))
}

/// Integration tests (a `tests/` folder): whole files of test code.
fn is_test_file(path: &Path) -> bool {
    path.strip_prefix(root()).unwrap_or(path).components().any(|c| c.as_os_str() == "tests")
}

/// The lines (numbered from 0) of a Rust file's code holding a string that
/// starts with an SQL word, with the word; a file's unit tests (from its
/// `#[cfg(test)] mod tests` on) are test code, left out.
fn sql_strings(text: &str) -> Vec<(usize, &'static str)> {
    let lines: Vec<&str> = text.lines().collect();
    let tests = |w: &[&str]| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests");
    let code = lines.windows(2).position(tests).unwrap_or(lines.len());
    lines[..code].iter().enumerate().filter_map(|(n, line)| sql_string_in(line).map(|word| (n, word))).collect()
}

/// The SQL word a string literal on a line of code starts with, if more of
/// a statement follows it (a lone word is no statement, and `BEGIN` and
/// `COMMIT` are STOMP commands too).
fn sql_string_in(line: &str) -> Option<&'static str> {
    if line.trim_start().starts_with("//") {
        return None;
    }
    line.match_indices('"').find_map(|(at, _)| {
        let text = line[at + 1..].trim_start();
        let starts = |word: &&&str| {
            let after = text.strip_prefix(**word);
            after.is_some_and(|after| after.starts_with([' ', ';', '\\']))
        };
        SQL_WORDS.iter().find(starts).copied()
    })
}

/// Fails with `what`, each offender on a line of its own, and `fix`.
fn fail_on(what: &str, fix: &str, offenders: Vec<String>) {
    if !offenders.is_empty() {
        panic!("\n{what}:\n    {}\n\n{fix}\n", offenders.join("\n    "));
    }
}

#[test]
fn a_driver_is_found_by_its_paths_and_uses_only() {
    assert!(names_crate("    let conn = rusqlite::Connection::open(path)?;", "rusqlite"));
    assert!(names_crate("use tiberius::{Client, Row};", "tiberius"));
    assert!(names_crate("use rusqlite as db;", "rusqlite"));
    assert!(!names_crate("// we use rusqlite::Connection there", "rusqlite"));
    assert!(!names_crate("let url = \"sqlite://x\";", "rusqlite"));
    assert!(!names_crate("my_rusqlite::x()", "rusqlite"));
    assert!(depends_on("rusqlite.workspace = true", "rusqlite"));
    assert!(depends_on("tiberius = { version = \"0.13\" }", "tiberius"));
    assert!(depends_on("[dev-dependencies.rusqlite]", "rusqlite"));
    assert!(!depends_on("rusqlite-extra = \"1\"", "rusqlite"));
}

#[test]
fn sql_is_found_in_strings_of_code_only() {
    let sample = r#"//! A module that talks to the database itself.
fn purge(conn: &Connection) {
    // "DELETE FROM orders" in a comment is prose.
    conn.execute("DELETE FROM orders", [])?;
    let sql = format!("  SELECT {COLUMNS} FROM orders");
    conn.execute_batch("BEGIN IMMEDIATE")?;
    conn.execute_batch("ROLLBACK; COMMIT")?;
    client.send(vec![Frame::new("BEGIN"), Frame::new("COMMIT")]).await?;
    let note = "update the docs; SELECTED rows, sqlite://x";
    let q = concat!("UPDATE outbox SET \
        dead_at = NULL");
}

#[cfg(test)]
mod tests {
    fn fixture(conn: &Connection) {
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
    }
}
"#;
    assert_eq!(sql_strings(sample), [(3, "DELETE"), (4, "SELECT"), (5, "BEGIN"), (6, "ROLLBACK"), (9, "UPDATE")]);
    assert!(is_test_file(&root().join("schema/tests/it/contract.rs")));
    assert!(!is_test_file(&root().join("schema/src/sqlite/outbox.rs")));
}

#[test]
fn sql_built_from_a_value_is_found_on_a_planted_sample() {
    // The shapes this workspace once had (`mssql/sql.rs` before issue 40).
    let table = r#"//! A statement table.
statements! {
    /// Inlined by `with_json`: @JSON is replaced.
    BEGIN_AND_INSERT_ORDERS = "BEGIN TRANSACTION; EXEC dbo.insert_orders @JSON";
    PURGE = "DELETE FROM dbo.outbox WHERE outbox_id IN (SELECT TOP (@LIMIT) p.outbox_id FROM dbo.outbox p)";
    PLACE_ORDER = "EXEC dbo.place_order @P1, @P2; SELECT @@SPID, @cutoff";
}
pub(super) fn with_json(sql: &str, json: &str) -> String {
    sql.replace("@JSON", &format!("N'{}'", json.replace('\'', "''")))
}
fn place_calls_sql(n: usize) -> String {
    (0..n).map(|i| PLACE_ORDER.replace("@P1", &format!("@P{i}"))).collect()
}
fn fine(client: &mut Client) {
    exec(client, PLACE_ORDER, &[&name]).await?;
    let note = format!("placed {n} orders");
}
#[cfg(test)]
mod tests {
    fn expand() -> String { format!("{PLACE_ORDER}; {PURGE}") }
}
"#;
    let names: BTreeSet<String> = statement_names(table).into_iter().collect();
    assert_eq!(names, BTreeSet::from(["BEGIN_AND_INSERT_ORDERS", "PURGE", "PLACE_ORDER"].map(String::from)));
    let markers = [(3, "@JSON"), (4, "@LIMIT"), (8, "@JSON")].map(|(n, m)| (n, m.to_string()));
    assert_eq!(template_markers(table), markers, "in statements and in the code that fills them");
    let built: Vec<usize> = built_statements(table, &names).into_iter().map(|(n, _)| n).collect();
    assert_eq!(built, [11], "PLACE_ORDER replaced into; with_json's own line names no statement");
    assert_eq!(template_markers("    A = \"SELECT @P10, @@TRANCOUNT, @n\";"), []);
}
