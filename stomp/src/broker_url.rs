//! `BROKER_URL`, parsed once (by clap at start-up): one broker or a failover
//! list, with credentials. Its `Display` hides the passcode, so it can be logged.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::Config;

/// One broker, `tcp://[user:pass@]host:port` (or `stomp://`, or bare
/// `host:port`), or several: `failover:(tcp://a:61613,tcp://b:61613)` as
/// ActiveMQ clients write it, or the same list without the wrapper.
/// Credentials given on any address apply to all.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    addrs: Vec<String>,
    login: Option<String>,
    passcode: Option<String>,
}

/// The schemes of an address: both mean plain STOMP over TCP (no TLS, which
/// the client does not speak).
const SCHEMES: [&str; 2] = ["tcp", "stomp"];

/// A `BROKER_URL` that names no usable broker.
#[derive(Debug, thiserror::Error)]
#[error("broker url: {problem}")]
pub struct UrlError {
    /// What is wrong, naming the address without its credentials.
    problem: String,
    #[source]
    source: Option<url::ParseError>,
}

impl BrokerUrl {
    /// The brokers' `host:port`, in the order they are tried.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    /// Client settings for these brokers (heart-beat 5 s, connect within 10 s).
    pub fn config(&self) -> Config {
        Config {
            addrs: self.addrs.clone(),
            login: self.login.clone(),
            passcode: self.passcode.clone(),
            heartbeat: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl FromStr for BrokerUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let error = |problem: String, source| UrlError { problem, source };
        let trimmed = text.trim();
        let list = match trimmed.strip_prefix("failover:") {
            Some(rest) => rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
                .map(|(inner, _options)| inner)
                .ok_or_else(|| error("write failover:(tcp://a:61613,tcp://b:61613)".into(), None))?,
            None => trimmed,
        };
        let mut broker = BrokerUrl { addrs: Vec::new(), login: None, passcode: None };
        let has_credentials = list.contains('@');
        for (n, one) in list.split(',').map(str::trim).filter(|a| !a.is_empty()).enumerate() {
            let with_scheme = match one.contains("://") {
                true => one.to_string(),
                false => format!("tcp://{one}"),
            };
            // Only what follows an `@` is surely no secret: with credentials in
            // the URL, a part without one may be a piece of a passcode that
            // held a comma, so it is named by its place, never shown.
            let shown = match one.rsplit_once('@') {
                Some((_, addr)) => format!("{addr:?}"),
                None if has_credentials => format!(
                    "address {} (not shown: it may hold part of a credential; write a comma in a login or \
                     passcode as %2C)",
                    n + 1
                ),
                None => format!("{one:?}"),
            };
            let url = url::Url::parse(&with_scheme)
                .map_err(|e| error(format!("{shown} is not a broker address"), Some(e)))?;
            // The scheme is never shown: with credentials it may be a piece of a passcode.
            if !SCHEMES.contains(&url.scheme()) {
                return Err(error(format!("{shown} has a scheme we do not speak: write tcp:// or stomp://"), None));
            }
            let (Some(host), Some(port)) = (url.host_str().filter(|h| !h.is_empty()), url.port().filter(|p| *p > 0))
            else {
                return Err(error(format!("{shown} needs host:port"), None));
            };
            if !url.username().is_empty() {
                broker.login = Some(decoded(url.username()));
                broker.passcode = Some(url.password().map(decoded).unwrap_or_default());
            }
            broker.addrs.push(format!("{host}:{port}"));
        }
        if broker.addrs.is_empty() {
            return Err(error("names no broker".into(), None));
        }
        Ok(broker)
    }
}

fn decoded(part: &str) -> String {
    percent_encoding::percent_decode_str(part).decode_utf8_lossy().into_owned()
}

/// The URL with `***` for the passcode.
impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let creds = match (&self.login, &self.passcode) {
            (Some(login), Some(_)) => format!("{login}:***@"),
            (Some(login), None) => format!("{login}@"),
            _ => String::new(),
        };
        let each: Vec<String> = self.addrs.iter().map(|addr| format!("tcp://{creds}{addr}")).collect();
        match each.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "failover:({})", many.join(",")),
        }
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broker_or_a_failover_list() {
        let one: BrokerUrl = "tcp://app:s3cret@mq:61613".parse().unwrap();
        let config = one.config();
        assert_eq!(
            (config.addrs, config.login.as_deref(), config.passcode.as_deref()),
            (vec!["mq:61613".to_string()], Some("app"), Some("s3cret"))
        );
        let pair: BrokerUrl = "failover:(tcp://a:61613, tcp://b:61614)?randomize=false".parse().unwrap();
        assert_eq!(pair.addrs(), ["a:61613", "b:61614"]);
        let list: BrokerUrl = "tcp://a:61613,stomp://u:p@b:61614".parse().unwrap();
        assert_eq!((list.addrs().len(), list.login.as_deref()), (2, Some("u")), "credentials apply to all");
        assert_eq!("127.0.0.1:61613".parse::<BrokerUrl>().unwrap().addrs(), ["127.0.0.1:61613"]);
        let encoded: BrokerUrl = "tcp://app:p%40ss%2Cw@mq:61613".parse().unwrap();
        assert_eq!(encoded.passcode.as_deref(), Some("p@ss,w"), "a percent-encoded passcode is decoded");
        for bad in ["failover:tcp://a:1", "tcp://nohost", "failover:()", "", "tcp://a:notaport", "tcp://a:0"] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad:?} is refused");
        }
        let refused = "tcp://app:s3cret@mq".parse::<BrokerUrl>().unwrap_err().to_string();
        assert!(refused.contains("\"mq\" needs host:port") && !refused.contains("s3cret"), "{refused}");
    }

    #[test]
    fn the_passcode_never_shows() {
        let one: BrokerUrl = "tcp://app:s3cret@mq:61613".parse().unwrap();
        assert_eq!(one.to_string(), "tcp://app:***@mq:61613");
        let pair: BrokerUrl = "failover:(tcp://app:pw1@a:61613,tcp://b:61613)".parse().unwrap();
        assert_eq!(pair.to_string(), "failover:(tcp://app:***@a:61613,tcp://app:***@b:61613)");
        assert!(!format!("{pair:?}").contains("pw1"));
        assert_eq!("mq:61613".parse::<BrokerUrl>().unwrap().to_string(), "tcp://mq:61613");
    }

    #[test]
    fn a_comma_in_a_passcode_leaks_no_part_of_it() {
        for url in ["tcp://app:Pa55x,W0rdy@mq:61613", "failover:(tcp://app:Zq1,Zq2,Zq3@mq:61613)"] {
            let error = url.parse::<BrokerUrl>().unwrap_err();
            let shown = error_reporter::Report::new(&error).to_string();
            for piece in ["Pa55x", "W0rdy", "Zq1", "Zq2", "Zq3"] {
                assert!(!shown.contains(piece), "{shown}");
            }
            assert!(shown.contains("%2C"), "says how to write it: {shown}");
        }
    }

    #[test]
    fn a_scheme_we_do_not_speak_is_refused_naming_those_we_do() {
        for bad in ["bogus://mq:61613", "ssl://mq:61613", "failover:(tcp://a:61613,http://b:61613)", "TCP+x://mq:1"] {
            let refused = bad.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(refused.contains("tcp://") && refused.contains("stomp://"), "{bad}: {refused}");
        }
        let refused = "bogus://app:s3cret@mq:61613".parse::<BrokerUrl>().unwrap_err().to_string();
        assert!(!refused.contains("s3cret"), "{refused}");
        assert_eq!("STOMP://mq:61613".parse::<BrokerUrl>().unwrap().addrs(), ["mq:61613"]);
    }
}
