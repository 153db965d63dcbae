//! `[[hook]]`: a program to run or a URL to POST to when events happen.
use serde::Deserialize;

use super::reference::{self as key, Key};

/// Every event name the daemon emits (`[[hook]] on`, `multiroute events`).
pub const EVENT_NAMES: [&str; 15] = [
    "up",
    "down",
    "degraded",
    "drained",
    "failover",
    "failback",
    "all_down",
    "restored",
    "standby",
    "active",
    "budget_warning",
    "exhausted",
    "reloaded",
    "repaired",
    "address_changed",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The events it is for; all when empty.
    pub on: Vec<String>,
    pub action: HookAction,
    /// The longest one delivery may take; a program is killed then.
    pub timeout_ms: u64,
    /// Events of one uplink within this window are delivered once, the latest.
    pub debounce_ms: u64,
    /// Further attempts after a failed delivery, 1 s, 2 s, 4 s … apart.
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// argv, no shell; the event in `MULTIROUTE_*` variables and as JSON on stdin.
    Exec(Vec<String>),
    /// A POST of the event's JSON.
    Url(HttpUrl),
}

/// A plain-HTTP URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// With the query, as sent in the request line.
    pub path: String,
}

impl HttpUrl {
    /// Where it goes without what may be a secret (its path and query).
    pub fn redacted(&self) -> String {
        format!("http://{}:{}/…", self.host, self.port)
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(
                    "https is not supported: POST to a local relay over http (a router's hooks need no TLS stack)"
                        .into(),
                );
            }
            _ => return Err("must be an http:// URL".into()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{port:?} is not a port"))?,
            ),
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("names no host".into());
        }
        Ok(HttpUrl {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// `[[hook]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHook {
    #[serde(default)]
    pub(super) on: Vec<String>,
    pub(super) exec: Option<Vec<String>>,
    pub(super) url: Option<String>,
    pub(super) timeout_ms: Option<i64>,
    pub(super) debounce_ms: Option<i64>,
    pub(super) retries: Option<i64>,
}

/// Validates one hook; errors are (field, problem). The URL's text is never in
/// an error: it may carry a token.
pub(super) fn validate(raw: RawHook) -> Result<Hook, (&'static str, String)> {
    if let Some(name) = raw.on.iter().find(|n| !EVENT_NAMES.contains(&n.as_str())) {
        return Err((
            "on",
            format!(
                "{name:?} is not an event; they are: {}",
                EVENT_NAMES.join(", ")
            ),
        ));
    }
    let action = match (raw.exec, raw.url) {
        (Some(argv), None) => HookAction::Exec(
            super::on_dead::absolute_argv(argv).map_err(|problem| ("exec", problem))?,
        ),
        (None, Some(url)) => HookAction::Url(url.parse().map_err(|problem| ("url", problem))?),
        _ => return Err(("exec", "give exactly one of exec or url".into())),
    };
    let ranged = |spec: &'static Key, value: Option<i64>| {
        spec.number(value.unwrap_or(spec.default_number()))
            .map_err(|problem| (spec.name, problem))
    };
    Ok(Hook {
        on: raw.on,
        action,
        timeout_ms: u64::from(ranged(&key::HOOK_TIMEOUT_MS, raw.timeout_ms)?.max(1)),
        debounce_ms: ranged(&key::HOOK_DEBOUNCE_MS, raw.debounce_ms)?.into(),
        retries: ranged(&key::HOOK_RETRIES, raw.retries)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_split_and_https_is_refused() {
        let url: HttpUrl = "http://192.0.2.5:8080/hook?token=s3cret".parse().unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("192.0.2.5", 8080, "/hook?token=s3cret")
        );
        assert_eq!(url.redacted(), "http://192.0.2.5:8080/…");
        let bare: HttpUrl = "http://ntfy.lan".parse().unwrap();
        assert_eq!((bare.port, bare.path.as_str()), (80, "/"));
        let v6: HttpUrl = "http://[2001:db8::5]:81/x".parse().unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::5", 81));
        assert!(
            "https://x/"
                .parse::<HttpUrl>()
                .unwrap_err()
                .contains("https is not supported")
        );
        assert!("ftp://x/".parse::<HttpUrl>().is_err());
    }
}
