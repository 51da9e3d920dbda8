//! `DATABASE_URL`, parsed once (by clap at start-up, through [`DatabaseArgs`]):
//! which backend, where, and its options. Its `Display` hides the password,
//! so it can be logged as it is.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::mssql::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, Server};
use crate::{MssqlStore, SqliteStore, Store};

/// The database flag every service has.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Database: `sqlite://PATH` (embedded default; options `?busy_timeout_ms=N&synchronous=full|normal`),
    /// `mssql://USER:PASSWORD@HOST:PORT/DATABASE[?trust_server_certificate=true]` (percent-encode
    /// `/ ? # @ :` in the password) or an ADO.NET string (`server=tcp:HOST,1433;user=…;password=…`).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://.orderflow/orderflow.db", value_parser = Parser)]
    pub database_url: DatabaseUrl,
    /// SQL Server: how long opening a connection (TCP, TLS, login) may take, in ms (100-600000);
    /// after a failed one, the next is tried after a backoff of 0.1 s doubling to 5 s.
    #[arg(long, env = "DB_CONNECT_TIMEOUT_MS", default_value_t = CONNECT_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(CONNECT_TIMEOUT_MS_RANGE))]
    pub db_connect_timeout_ms: u64,
    /// SQL Server: how long a call may wait for the server's answer, in ms (100-3600000); past it
    /// the connection is closed (the server rolls back what it held) and the call is retried as an outage.
    #[arg(long, env = "DB_COMMAND_TIMEOUT_MS", default_value_t = COMMAND_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(COMMAND_TIMEOUT_MS_RANGE))]
    pub db_command_timeout_ms: u64,
}

/// `DB_CONNECT_TIMEOUT_MS`'s range.
pub const CONNECT_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=600_000;
/// `DB_COMMAND_TIMEOUT_MS`'s range.
pub const COMMAND_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;

impl DatabaseArgs {
    /// The URL with the timeouts these flags set.
    pub fn url(&self) -> DatabaseUrl {
        let mut url = self.database_url.clone();
        if let Target::Mssql(server) = &mut url.target {
            server.connect_timeout = Duration::from_millis(self.db_connect_timeout_ms);
            server.config.command_timeout(Some(Duration::from_millis(self.db_command_timeout_ms)));
        }
        url
    }
}

/// Parses the flag without echoing it: clap's own message would print the
/// value, password and all.
#[derive(Clone)]
struct Parser;

impl clap::builder::TypedValueParser for Parser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let refused = |why: String| {
            let message = format!("invalid --database-url (DATABASE_URL): {why}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refused("not UTF-8".into()))?;
        text.parse().map_err(|e: anyhow::Error| refused(format!("{e:#}")))
    }
}

/// A parsed `DATABASE_URL`.
#[derive(Clone)]
pub struct DatabaseUrl {
    pub(crate) target: Target,
    /// The URL as it may be logged.
    shown: String,
}

#[derive(Clone)]
pub(crate) enum Target {
    Sqlite { path: PathBuf, options: SqliteOptions },
    Mssql(Box<Server>),
}

/// What a `sqlite://` URL may ask for; `None` leaves the backend's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SqliteOptions {
    /// How long a writer waits for another process's lock (default 10 s).
    pub busy_ms: Option<u64>,
    /// `FULL` or `NORMAL` (default: what the service's durability needs).
    pub synchronous: Option<&'static str>,
}

/// How much of a service's own commits must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk when it returns: what a 201 or an ACK promises.
    Full,
    /// For writes that are redone anyway (the relay's leases and marks: a lost
    /// lease lapses, a lost mark sends the message again and the consumer
    /// dedupes). On SQLite the commit skips its fsync (`synchronous = NORMAL`);
    /// WAL is written in order, so the next durable commit of any process
    /// makes it durable too, and only the relay's last commits before a power
    /// cut (never a crash) can be lost. SQL Server is always durable.
    Relaxed,
}

/// The backend a URL opened.
pub(crate) enum Backend {
    Sqlite(SqliteStore),
    Mssql(MssqlStore),
}

impl DatabaseUrl {
    /// True for SQL Server.
    pub fn is_mssql(&self) -> bool {
        matches!(self.target, Target::Mssql(_))
    }

    /// Opens the database (a SQLite file is created if needed) and runs the
    /// migrations; a `synchronous=` option in a SQLite URL wins over `durability`.
    pub async fn open(&self, durability: Durability) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match self.connect(durability).await? {
            Backend::Sqlite(store) => Arc::new(store),
            Backend::Mssql(store) => Arc::new(store),
        })
    }

    /// [`DatabaseUrl::open`], as the backend's own type.
    pub(crate) async fn connect(&self, durability: Durability) -> anyhow::Result<Backend> {
        Ok(match &self.target {
            Target::Sqlite { path, options } => Backend::Sqlite(
                SqliteStore::open(path, options, durability)
                    .await
                    .with_context(|| format!("opening sqlite database {}", path.display()))?,
            ),
            Target::Mssql(server) => {
                Backend::Mssql(MssqlStore::connect((**server).clone()).await.context("connecting to sql server")?)
            }
        })
    }

    /// The SQL Server settings, when the URL names SQL Server.
    #[cfg(feature = "testing")]
    pub(crate) fn mssql_config(&self) -> Option<&tiberius::Config> {
        match &self.target {
            Target::Mssql(server) => Some(&server.config),
            Target::Sqlite { .. } => None,
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("sqlite:") {
            let rest = text["sqlite:".len()..].trim_start_matches("//");
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            anyhow::ensure!(!path.is_empty(), "sqlite url {text:?} names no file: write sqlite://PATH");
            let options = sqlite_options(query)?;
            return Ok(Self { target: Target::Sqlite { path: PathBuf::from(path), options }, shown: text.into() });
        }
        let mut config = if lower.starts_with("server=") {
            tiberius::Config::from_ado_string(text).context("ADO.NET connection string")?
        } else if lower.starts_with("mssql://") || lower.starts_with("sqlserver://") {
            mssql_config(text)?
        } else {
            anyhow::bail!(
                "unsupported DATABASE_URL scheme: write sqlite://PATH, mssql://USER:PASSWORD@HOST:PORT/DATABASE \
                 (or sqlserver://) or an ADO.NET string server=tcp:HOST,PORT;user=…;password=…"
            )
        };
        config.application_name("orderflow");
        config.command_timeout(Some(COMMAND_TIMEOUT));
        let server = Server { config, connect_timeout: CONNECT_TIMEOUT };
        Ok(Self { target: Target::Mssql(Box::new(server)), shown: redacted(text) })
    }
}

/// A SQLite writer's wait for another process's lock: long enough to ride out
/// a commit, short enough that a held lock reads as "unavailable" within minutes.
const BUSY_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 10..=600_000;

fn sqlite_options(query: &str) -> anyhow::Result<SqliteOptions> {
    let mut options = SqliteOptions::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match (key.as_ref(), value.to_ascii_lowercase().as_str()) {
            ("busy_timeout_ms", v) => {
                let ms = v.parse().ok().filter(|ms| BUSY_TIMEOUT_MS.contains(ms));
                let range = format!("{}-{}", BUSY_TIMEOUT_MS.start(), BUSY_TIMEOUT_MS.end());
                options.busy_ms = Some(ms.with_context(|| format!("busy_timeout_ms={v:?}: say {range} (ms)"))?)
            }
            ("synchronous", "full") => options.synchronous = Some("FULL"),
            ("synchronous", "normal") => options.synchronous = Some("NORMAL"),
            _ => anyhow::bail!(
                "unknown sqlite url option {key}={value:?} (known: busy_timeout_ms=N, synchronous=full|normal)"
            ),
        }
    }
    Ok(options)
}

/// `mssql://user:password@host:port/database?trust_server_certificate=true&encrypt=…`.
fn mssql_config(text: &str) -> anyhow::Result<tiberius::Config> {
    let url = url::Url::parse(text).context("mssql url")?;
    let host = url.host_str().filter(|h| !h.is_empty()).context("mssql url needs user:password@host")?;
    anyhow::ensure!(!url.username().is_empty(), "mssql url needs user:password@host");
    let mut config = tiberius::Config::new();
    config.host(host.trim_start_matches('[').trim_end_matches(']'));
    config.port(url.port().unwrap_or(1433));
    config.database(match url.path().trim_start_matches('/') {
        "" => "master".to_string(),
        database => decoded(database),
    });
    let password = url.password().map(decoded).unwrap_or_default();
    config.authentication(tiberius::AuthMethod::sql_server(decoded(url.username()), password));
    for (key, value) in url.query_pairs() {
        match (key.to_ascii_lowercase().replace('_', "").as_str(), value.to_ascii_lowercase().as_str()) {
            ("trustservercertificate", "true") => config.trust_cert(),
            ("encrypt", "false") => config.encryption(tiberius::EncryptionLevel::NotSupported),
            ("encrypt", "true") => config.encryption(tiberius::EncryptionLevel::Required),
            _ => anyhow::bail!("unknown mssql url option {key}={value:?}"),
        }
    }
    Ok(config)
}

fn decoded(part: &str) -> String {
    percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()
}

/// A SQL Server URL or ADO.NET string with `***` for the password.
fn redacted(text: &str) -> String {
    if text.to_ascii_lowercase().starts_with("server=") {
        return ado_parts(text)
            .into_iter()
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") || k.trim().eq_ignore_ascii_case("pwd") => {
                    format!("{k}=***")
                }
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(";");
    }
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "mssql://(unparsable)".into(),
    }
}

/// The `key=value` parts of an ADO.NET string, split on `;` outside quotes and braces.
pub(crate) fn ado_parts(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut closing) = (0, None);
    for (i, c) in s.char_indices() {
        match (closing, c) {
            (Some(end), c) if c == end => closing = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => closing = Some(c),
            (None, '{') => closing = Some('}'),
            (None, ';') => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            (None, _) => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        let shown = |text: &str| text.parse::<DatabaseUrl>().unwrap().to_string();
        assert_eq!(shown("mssql://sa:Secret1!@db:1433/orders"), "mssql://sa:***@db:1433/orders");
        assert_eq!(
            shown("server=tcp:db,1433;user=sa;password=Secret1!;TrustServerCertificate=true"),
            "server=tcp:db,1433;user=sa;password=***;TrustServerCertificate=true"
        );
        assert_eq!(shown("sqlite://data/orderflow.db"), "sqlite://data/orderflow.db");
        assert_eq!(shown("mssql://sa:Sec,ret@db:1433/orders"), "mssql://sa:***@db:1433/orders");
        assert_eq!(shown("server=tcp:db,1433;user=sa;password={a;b}"), "server=tcp:db,1433;user=sa;password=***");
        let url: DatabaseUrl = "mssql://sa:Secret1!@db/orders".parse().unwrap();
        assert!(!format!("{url:?}").contains("Secret1"));
    }

    #[test]
    fn sqlite_urls_name_a_file_and_known_options() {
        let url: DatabaseUrl = "sqlite:///tmp/x.db?busy_timeout_ms=100&synchronous=NORMAL".parse().unwrap();
        let Target::Sqlite { path, options } = url.target else { panic!("sqlite") };
        assert_eq!(path, PathBuf::from("/tmp/x.db"));
        assert_eq!(options, SqliteOptions { busy_ms: Some(100), synchronous: Some("NORMAL") });
        let Target::Sqlite { path, .. } = "sqlite://.orderflow/o.db".parse::<DatabaseUrl>().unwrap().target else {
            panic!("sqlite")
        };
        assert_eq!(path, PathBuf::from(".orderflow/o.db"), "relative to the working directory");
        let refused = "sqlite://x.db?synchronous=off".parse::<DatabaseUrl>().err().unwrap().to_string();
        assert!(refused.contains("synchronous=full|normal"), "{refused}");
        for bad in ["sqlite://x.db?busy_timeout_ms=soon", "sqlite://x.db?journal=off", "sqlite://", "postgres://x/y"] {
            assert!(bad.parse::<DatabaseUrl>().is_err(), "{bad:?} is refused");
        }
        for bad in ["0", "-1", "9", "600001", "18446744073709551616"] {
            let refused =
                format!("{:#}", format!("sqlite://x.db?busy_timeout_ms={bad}").parse::<DatabaseUrl>().err().unwrap());
            assert!(refused.contains("busy_timeout_ms") && refused.contains("10-600000"), "{refused}");
        }
    }

    #[test]
    fn a_scheme_we_do_not_speak_is_refused_naming_those_we_do() {
        for bad in ["bogus://x/y", "postgres://u:p@db/orders", "file:///tmp/x.db", "x.db"] {
            let refused = bad.parse::<DatabaseUrl>().err().unwrap().to_string();
            for accepted in ["sqlite://", "mssql://", "server="] {
                assert!(refused.contains(accepted), "{bad}: {refused}");
            }
        }
    }

    #[test]
    fn mssql_urls_decode_their_parts() {
        let url: DatabaseUrl = "mssql://app:p%40ss%2Fw@db:1444/orders?trust_server_certificate=true".parse().unwrap();
        assert!(url.is_mssql());
        assert_eq!(url.to_string(), "mssql://app:***@db:1444/orders?trust_server_certificate=true");
        let Target::Mssql(server) = url.target else { panic!("mssql") };
        assert_eq!(server.config.get_addr(), "db:1444");
        assert_eq!(
            (server.connect_timeout, server.config.get_command_timeout()),
            (CONNECT_TIMEOUT, Some(COMMAND_TIMEOUT))
        );
        for bad in ["mssql://db:1433/orders", "mssql://sa:pw@db/orders?tls=maybe"] {
            assert!(bad.parse::<DatabaseUrl>().is_err(), "{bad:?} is refused");
        }
    }
}
