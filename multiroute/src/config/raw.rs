//! The config as written in the file: parsed strictly (unknown keys are errors),
//! with the defaults of PRODUCT.md, before validation.
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    model::{BalanceBy, Failback},
    policy,
    reference::{self as key, Kind},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) lan: Vec<String>,
    #[serde(default)]
    pub(super) uplink: Vec<RawUplink>,
    #[serde(default)]
    pub(super) health: RawHealth,
    #[serde(default)]
    pub(super) routing: RawRouting,
    #[serde(default)]
    pub(super) control: RawControl,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) balance: RawBalance,
    #[serde(default)]
    pub(super) datapath: RawDatapath,
    #[serde(default)]
    pub(super) rule: Vec<policy::RawRule>,
    #[serde(default)]
    pub(super) hook: Vec<super::hook::RawHook>,
    #[serde(default)]
    pub(super) web: RawWeb,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWeb {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatapath {
    #[serde(default = "yes")]
    pub(super) fast_path: bool,
}

impl Default for RawDatapath {
    fn default() -> Self {
        Self { fast_path: yes() }
    }
}

fn yes() -> bool {
    flag_default(&key::FAST_PATH)
}

fn flag_default(key: &key::Key) -> bool {
    matches!(key.kind, Kind::Flag { default: true })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBalance {
    #[serde(default)]
    pub(super) by: BalanceBy,
    #[serde(default)]
    pub(super) failback: Failback,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    pub(super) name: String,
    pub(super) interface: String,
    pub(super) gateway: Option<String>,
    pub(super) gateway6: Option<String>,
    pub(super) nat6: Option<String>,
    pub(super) npt_prefix: Option<String>,
    #[serde(default = "default_weight")]
    pub(super) weight: i64,
    #[serde(default = "default_tier")]
    pub(super) tier: i64,
    #[serde(default)]
    pub(super) pin: Vec<String>,
    #[serde(default)]
    pub(super) pin_from: Vec<String>,
    pub(super) probe: Option<Vec<String>>,
    /// `[uplink.health]`: this uplink's quality limits over `[health]`'s.
    #[serde(default)]
    pub(super) health: RawQuality,
    pub(super) budget: Option<super::budget::RawBudget>,
    pub(super) on_dead: Option<super::on_dead::RawOnDead>,
    pub(super) on_dead_after_ms: Option<i64>,
}

fn default_weight() -> i64 {
    key::WEIGHT.default_number()
}

fn default_tier() -> i64 {
    key::TIER.default_number()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    pub(super) targets: Vec<String>,
    pub(super) interval_ms: i64,
    pub(super) timeout_ms: i64,
    pub(super) down: i64,
    pub(super) up: i64,
    /// The quality limits every uplink has unless its `[uplink.health]` says.
    #[serde(flatten)]
    pub(super) quality: RawQuality,
}

impl Default for RawHealth {
    fn default() -> Self {
        Self {
            targets: vec!["gateway".into()],
            interval_ms: key::INTERVAL_MS.default_number(),
            timeout_ms: key::TIMEOUT_MS.default_number(),
            down: key::DOWN.default_number(),
            up: key::UP.default_number(),
            quality: RawQuality::default(),
        }
    }
}

/// Quality limits as written; unset ones come from `[health]`, then the defaults.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQuality {
    pub(super) max_loss_percent: Option<i64>,
    pub(super) max_rtt_ms: Option<i64>,
    pub(super) recover_loss_percent: Option<i64>,
    pub(super) recover_rtt_ms: Option<i64>,
    pub(super) window: Option<i64>,
    pub(super) targets_needed: Option<i64>,
    pub(super) min_state_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRouting {
    pub(super) table_base: i64,
    pub(super) rule_priority: i64,
    pub(super) fwmark_mask: i64,
    pub(super) main_default: bool,
    pub(super) pin_path: PathBuf,
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            table_base: key::TABLE_BASE.default_number(),
            rule_priority: key::RULE_PRIORITY.default_number(),
            fwmark_mask: key::FWMARK_MASK.default_number(),
            main_default: flag_default(&key::MAIN_DEFAULT),
            pin_path: key::PIN_PATH.default_text().into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawControl {
    pub(super) socket: PathBuf,
    pub(super) state_dir: PathBuf,
}

impl Default for RawControl {
    fn default() -> Self {
        Self {
            socket: key::SOCKET.default_text().into(),
            state_dir: key::STATE_DIR.default_text().into(),
        }
    }
}
