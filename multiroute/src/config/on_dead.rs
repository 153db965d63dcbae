//! `on_dead`: what to do about an uplink that has been dead for a while — the
//! "zombie" modem that keeps its link but stops routing until its lease is
//! renewed or its link reset.
use serde::Deserialize;

use super::reference as key;

/// A validated `on_dead`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDead {
    pub action: DeadAction,
    /// Dead this long before the first attempt; each further one waits twice as
    /// long as the one before (at most an hour) while it stays dead.
    pub after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadAction {
    /// Ask the interface's DHCP client to renew (rebind) its lease.
    Renew,
    /// Take the link down and up again.
    Bounce,
    /// Run this program (argv, no shell).
    Command(Vec<String>),
}

/// `on_dead` as written: a word or an argv list.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawOnDead {
    Word(String),
    Command(Vec<String>),
}

/// A program to exec (no shell): an argv whose program is an absolute path.
pub(super) fn absolute_argv(argv: Vec<String>) -> Result<Vec<String>, String> {
    match argv.first() {
        Some(program) if program.starts_with('/') => Ok(argv),
        Some(program) => Err(format!(
            "{program:?} must be an absolute path (no shell runs it)"
        )),
        None => Err("an empty command".into()),
    }
}

/// Validates `on_dead` and `on_dead_after_ms`; errors are (field, problem).
pub(super) fn validate(
    raw: Option<RawOnDead>,
    after_ms: Option<i64>,
) -> Result<Option<OnDead>, (&'static str, String)> {
    let action = match raw {
        None if after_ms.is_some() => {
            return Err(("on_dead_after_ms", "only applies with on_dead".into()));
        }
        None => return Ok(None),
        Some(RawOnDead::Word(word)) => match word.as_str() {
            "renew" => DeadAction::Renew,
            "bounce" => DeadAction::Bounce,
            other => {
                return Err((
                    "on_dead",
                    format!("{other:?} must be {}", key::ON_DEAD_FORM),
                ));
            }
        },
        Some(RawOnDead::Command(argv)) => {
            DeadAction::Command(absolute_argv(argv).map_err(|problem| ("on_dead", problem))?)
        }
    };
    let after_ms = key::ON_DEAD_AFTER_MS
        .number(after_ms.unwrap_or(key::ON_DEAD_AFTER_MS.default_number()))
        .map_err(|problem| ("on_dead_after_ms", problem))?
        .into();
    Ok(Some(OnDead { action, after_ms }))
}
