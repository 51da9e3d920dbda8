//! `orderflowctl`: the ops page's reads and actions from a terminal, for incidents.
//!
//! Invariant: it only talks HTTP to the producer's `/ops/...` routes, so every
//! action passes the same admin door and lands in the same audit trail as a
//! click on the page; it never touches the database or the broker. Its exit
//! code says what happened ([`Exit`]), so scripts can test it.

mod answers;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::answers::{Groups, Purged, RelayAction, Replayed, Requeued, Retried, State, Stored};

const EXIT_CODES: &str = "\
Exit codes:
  0  done (or read)
  1  refused or not found: no or a wrong token (401), actions off (403), no such
     row, order, dead letter or group (404), not in a state to act on (409, 422)
  2  usage: bad arguments, or a value the producer calls malformed (400)
  3  unreachable: no answer from the producer, an answer that is not the producer's
     (not its JSON, cut short, over 4 MiB: an action's outcome is then unknown),
     or it failed (5xx), or it cannot reach its database (status still prints
     what it could read)";

/// Reads and drives a running orderflow pipeline through its producer's ops routes.
#[derive(Debug, Parser)]
#[command(name = "orderflowctl", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// The producer's base URL (the address of its ops page).
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:8080")]
    pub producer_url: url::Url,
    /// Bearer token of the ops actions (the producer's ADMIN_TOKEN).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Who acts, written to the audit trail (default: the login name, $USER or $LOGNAME).
    #[arg(long, env = "REQUESTED_BY")]
    pub requested_by: Option<String>,
    /// Print the producer's JSON answer (for scripts) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for an answer (e.g. 30s; a drain waits for the batch in flight).
    #[arg(long, global = true, default_value = "30s", value_parser = seconds)]
    pub timeout: Duration,
    #[command(subcommand)]
    /// What to do (clap ignores this comment on a subcommand field).
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Services in words, the outbox backlog, the relays, the reconciliation figures.
    Status,
    /// Pauses a relay: it stops claiming (the batch in flight finishes).
    Pause(RelayArg),
    /// Resumes a paused relay.
    Resume(RelayArg),
    /// Pauses a relay, waits for its batch in flight and releases every lease (before a restart).
    Drain(RelayArg),
    /// Outbox rows parked after the broker refused them.
    Parked,
    /// Puts a parked outbox row back in line.
    Requeue {
        /// The parked row's outbox id (a UUID).
        outbox_id: uuid::Uuid,
    },
    /// Puts a failed order back to pending with a fresh message, or every failed order of a group.
    Retry {
        /// The failed order.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        order_id: Option<i64>,
        /// A failure group's fingerprint (see `groups`).
        #[arg(long)]
        group: Option<String>,
    },
    /// Dead letters, newest first.
    DeadLetters,
    /// Sends the order a dead letter names again, or those of every open dead letter of a group.
    Replay {
        /// The dead letter's id (its `dlq-id`).
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        dead_letter_id: Option<String>,
        /// A failure group's fingerprint (see `groups`).
        #[arg(long)]
        group: Option<String>,
    },
    /// Failed orders and open dead letters grouped by the fingerprint of their reason.
    Groups,
    /// Deletes the dead letters sent to the .DLQ longer ago than an age.
    Purge {
        /// The age: seconds, or with a unit (90m, 12h, 7d).
        #[arg(long)]
        older_than: String,
    },
}

/// Which relay (as the ops page numbers them, from 0).
#[derive(Debug, clap::Args)]
pub struct RelayArg {
    /// The relay's index in the producer's OPS_RELAYS.
    #[arg(long, default_value_t = 0)]
    pub relay: usize,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs = s.strip_suffix('s').unwrap_or(s);
    secs.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{s:?}: say a number of seconds, e.g. 30s"))
}

/// The exit code of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Refused or not found.
    Refused = 1,
    /// Bad arguments or malformed values.
    Usage = 2,
    /// No answer, or the producer failed.
    Unreachable = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Why a run stopped early: what to print and the exit code.
struct Failed(Exit, String);

/// Prints what came: the producer's JSON with `--json`, else the text.
fn print_outcome(cli: &Cli, json: &Value, text: &str) {
    match cli.json {
        true => println!("{}", serde_json::to_string_pretty(json).unwrap_or_default()),
        false => print!("{text}"),
    }
}

/// The producer answered, but the database behind it cannot be reached.
fn database_down(cause: &str) -> Failed {
    Failed(Exit::Unreachable, format!("the producer cannot reach its database: {}", render::clean(cause)))
}

/// Parses the arguments, runs the command and prints its outcome; the exit code says how it went.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => Exit::Ok.into(),
        Err(Failed(code, message)) => {
            eprintln!("orderflowctl: {message}");
            code.into()
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failed> {
    let ops = Ops::new(cli)?;
    let (json, text) = match &cli.command {
        Command::Status => {
            let (raw, state) = ops.get::<State>("/ops/state").await?;
            if let Stored::Unreachable { database_error } = &state.stored {
                // The services' readiness still helps, so it is shown before the failure.
                print_outcome(cli, &raw, &render::status(&state));
                return Err(database_down(database_error));
            }
            (raw, render::status(&state))
        }
        Command::Parked => match ops.get::<State>("/ops/state").await? {
            (mut raw, State { stored: Stored::Read { parked, .. }, .. }) => {
                (raw["parked"].take(), render::parked(&parked))
            }
            (_, State { stored: Stored::Unreachable { database_error }, .. }) => {
                return Err(database_down(&database_error));
            }
        },
        Command::DeadLetters => match ops.get::<State>("/ops/state").await? {
            (mut raw, State { stored: Stored::Read { dead_letters, .. }, .. }) => {
                (raw["dead_letters"].take(), render::dead_letters(&dead_letters))
            }
            (_, State { stored: Stored::Unreachable { database_error }, .. }) => {
                return Err(database_down(&database_error));
            }
        },
        Command::Groups => {
            let (mut raw, groups) = ops.get::<Groups>("/ops/groups").await?;
            (raw["groups"].take(), render::groups(&groups.groups))
        }
        Command::Pause(r) => shown(ops.relay(r.relay, "pause").await?, render::relay),
        Command::Resume(r) => shown(ops.relay(r.relay, "resume").await?, render::relay),
        Command::Drain(r) => shown(ops.relay(r.relay, "drain").await?, render::relay),
        Command::Requeue { outbox_id } => {
            let answer = ops.post::<Requeued>("/ops/requeue", &[("outbox_id", &outbox_id.to_string())]).await?;
            shown(answer, render::requeued)
        }
        Command::Retry { group: Some(group), .. } => {
            shown(ops.post::<Retried>("/ops/groups/retry", &[("fingerprint", group)]).await?, render::retried)
        }
        Command::Retry { order_id, .. } => {
            let order_id = order_id.map(|id| id.to_string()).unwrap_or_default();
            shown(ops.post::<Retried>("/ops/retry", &[("order_id", &order_id)]).await?, render::retried)
        }
        Command::Replay { group: Some(group), .. } => {
            shown(ops.post::<Replayed>("/ops/groups/replay", &[("fingerprint", group)]).await?, render::replayed)
        }
        Command::Replay { dead_letter_id, .. } => {
            let id = dead_letter_id.clone().unwrap_or_default();
            shown(ops.post::<Replayed>("/ops/replay", &[("dead_letter_id", &id)]).await?, render::replayed)
        }
        Command::Purge { older_than } => {
            let answer = ops.post::<Purged>("/ops/dead-letters/purge", &[("older_than", older_than)]).await?;
            shown(answer, render::purged)
        }
    };
    print_outcome(cli, &json, &text);
    Ok(())
}

/// An answer as JSON for `--json` and as text for people.
fn shown<T>((raw, answer): (Value, T), show: fn(&T) -> String) -> (Value, String) {
    let text = show(&answer);
    (raw, text)
}

/// The producer's ops routes, with the caller's token and name.
struct Ops<'a> {
    cli: &'a Cli,
    http: reqwest::Client,
}

impl<'a> Ops<'a> {
    fn new(cli: &'a Cli) -> Result<Self, Failed> {
        let http = reqwest::Client::builder()
            .timeout(cli.timeout)
            .build()
            .map_err(|e| Failed(Exit::Unreachable, format!("http client: {e}")))?;
        Ok(Self { cli, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cli.producer_url.as_str().trim_end_matches('/'))
    }

    /// Who acts: `--requested-by`, else the login name.
    fn who(&self) -> Result<String, Failed> {
        let login = || std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok();
        self.cli
            .requested_by
            .clone()
            .or_else(login)
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
            .ok_or_else(|| Failed(Exit::Usage, "say who acts: --requested-by NAME (no login name found)".into()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(Value, T), Failed> {
        self.send(self.http.get(self.url(path)), Read::View).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, query: &[(&str, &String)]) -> Result<(Value, T), Failed> {
        let mut request = self.http.post(self.url(path)).query(query).header("x-requested-by", self.who()?);
        if let Some(token) = self.cli.admin_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            request = request.bearer_auth(token);
        }
        self.send(request, Read::Action).await
    }

    async fn relay(&self, relay: usize, action: &str) -> Result<(Value, RelayAction), Failed> {
        self.post("/ops/relay", &[("relay", &relay.to_string()), ("action", &action.to_string())]).await
    }

    /// Sends `request` and reads its answer as `T`. A refusal is read as the
    /// producer's `{"error": ...}`; any body of another shape means the answer
    /// did not come from the producer (a proxy's page, a cut connection), so
    /// it exits as unreachable, and for an action says its outcome is unknown.
    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        read: Read,
    ) -> Result<(Value, T), Failed> {
        let producer = &self.cli.producer_url;
        let response = request
            .send()
            .await
            .map_err(|e| Failed(Exit::Unreachable, format!("no answer from {producer}: {}", error_chain(&e))))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| "no content type".to_string(), render::clean);
        let unreadable = |why: answers::Unreadable| {
            let outcome = match (read, status.is_success()) {
                (Read::Action, true) => "; whether it was done is unknown: see the audit on the ops page",
                _ => "",
            };
            let why = render::clean(&why.to_string());
            Failed(Exit::Unreachable, format!("{status} from {producer} with {why}, {content_type}{outcome}"))
        };
        let body = answers::body(response).await.map_err(unreadable)?;
        if status.is_success() {
            return answers::parse::<T>(&body).map_err(unreadable);
        }
        let (_, refusal) = answers::parse::<answers::Refusal>(&body).map_err(unreadable)?;
        let code = match status.as_u16() {
            400 => Exit::Usage,
            500.. => Exit::Unreachable,
            _ => Exit::Refused,
        };
        Err(Failed(code, format!("{status}: {}", render::clean(&refusal.error))))
    }
}

/// What a request does, for what an unreadable answer means.
#[derive(Debug, Clone, Copy)]
enum Read {
    /// Only reads: asking again is safe.
    View,
    /// Changes something: an unreadable answer leaves its outcome unknown.
    Action,
}

/// An error with its causes, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arguments_say_what_scripts_need() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["orderflowctl"], args].concat());
        let cli = parse(&["--requested-by", "ann", "replay", "ID:x-1:1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Replay { dead_letter_id: Some(ref id), group: None } if id == "ID:x-1:1")
        );
        assert!(matches!(
            parse(&["retry", "--group", "order # not found"]).unwrap().command,
            Command::Retry { group: Some(_), .. }
        ));
        assert!(parse(&["retry"]).is_err(), "an order or a group");
        assert!(parse(&["retry", "12", "--group", "g"]).is_err(), "not both");
        assert!(parse(&["retry", "twelve"]).is_err(), "an order id is a number");
        assert!(parse(&["requeue", "not-a-uuid"]).is_err());
        assert!(parse(&["--producer-url", "not a url", "status"]).is_err());
        assert_eq!(parse(&["drain", "--relay", "1", "--json"]).map(|c| c.json).ok(), Some(true));
        assert_eq!(parse(&["status", "--timeout", "5s"]).unwrap().timeout, Duration::from_secs(5));
        let usage = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(usage.exit_code(), Exit::Usage as i32, "clap's usage errors exit 2, as documented");
    }
}
