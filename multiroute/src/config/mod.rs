//! The TOML config of PRODUCT.md: parsed strictly (unknown keys are errors), then
//! validated into a [`Config`] whose every field is known good. Validation reads
//! nothing from the host; `check` adds the host's side.
use std::path::Path;

mod budget;
mod hook;
mod model;
mod numbering;
mod on_dead;
mod policy;
mod probe_target;
mod raw;
pub mod reference;
mod validate;
pub use budget::{AtQuota, Budget, Period, format_size, parse_size};
pub use hook::{EVENT_NAMES, Hook, HookAction, HttpUrl};
pub use model::*;
pub use numbering::Numbering;
pub use on_dead::{DeadAction, OnDead};
pub use policy::{MAX_ROUTER_RULES, MAX_RULES, PolicyRule, PortRange, families, proto_name};
pub use probe_target::{ProbeTarget, Target};
pub use reference::{MAX_TIER, MAX_WEIGHT};

pub const DEFAULT_PATH: &str = "/etc/multiroute/multiroute.toml";

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_owned(),
            key: "(file)".into(),
            problem: format!("cannot read it: {err}"),
        })?;
        Self::parse(&text, path)
    }

    /// Validates `text`; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        validate::parse(text, file)
    }
}

#[cfg(test)]
mod tests;
