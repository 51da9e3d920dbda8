//! Marks whether the SQL Server contract suite can run: with `TEST_MSSQL_URL`
//! set the suite runs, without it its tests are ignored with the reason, so a
//! test that did not run is never counted as passed. It also rebuilds the
//! crate when a migration is added: `embed_migrations!` reads the folder at
//! compile time, and cargo does not watch it on its own.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mssql_server_given)");
    println!("cargo::rerun-if-env-changed=TEST_MSSQL_URL");
    println!("cargo::rerun-if-changed=migrations");
    if std::env::var("TEST_MSSQL_URL").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=mssql_server_given");
    }
}
