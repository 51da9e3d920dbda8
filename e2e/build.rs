//! Marks whether the end-to-end tests run on SQL Server (`TEST_DATABASE_URL`
//! names one): the tests of SQL Server's own failures run only there, and are
//! reported as ignored, with the reason, on SQLite: never counted as passed.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mssql_database)");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_default().trim().to_ascii_lowercase();
    if ["mssql:", "sqlserver:", "server="].iter().any(|scheme| url.starts_with(scheme)) {
        println!("cargo::rustc-cfg=mssql_database");
    }
}
