//! Marks whether the end-to-end tests run on SQL Server (`TEST_DATABASE_URL`
//! names one), so that the tests that need SQLite itself are ignored there
//! with the reason instead of passing without running.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(e2e_on_mssql)");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    let url = std::env::var("TEST_DATABASE_URL").unwrap_or_default().trim().to_ascii_lowercase();
    if ["mssql://", "sqlserver://", "server="].iter().any(|scheme| url.starts_with(scheme)) {
        println!("cargo::rustc-cfg=e2e_on_mssql");
    }
}
