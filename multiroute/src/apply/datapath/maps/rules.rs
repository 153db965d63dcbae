//! The policy rules' maps (see `plan::policy`): the rules, the set's header, and a
//! source and a destination prefix trie per family. Written as a whole when the
//! rule set changes (a reload, an uplink changing slot), read back whole to verify.
use std::path::Path;

use aya::maps::{Array, MapData};
use multiroute_ebpf::{MAX_RULES, PolicyRule, RuleSet, map_names};

use super::prefix_trie::Trie;
use crate::apply::datapath::{
    error::{DatapathError, map_error},
    sys::open_map,
};
use crate::plan::Policy;

/// A source and a destination trie of one family.
struct Tries<const N: usize> {
    src: Trie<N>,
    dst: Trie<N>,
}

impl<const N: usize> Tries<N> {
    fn open(pin_path: &Path, src: &'static str, dst: &'static str) -> Result<Self, DatapathError> {
        Ok(Self {
            src: Trie::open(pin_path, src)?,
            dst: Trie::open(pin_path, dst)?,
        })
    }
}

pub struct RuleMaps {
    rules: Array<MapData, PolicyRule>,
    set: Array<MapData, RuleSet>,
    ipv4: Tries<4>,
    ipv6: Tries<16>,
    /// The rule set as last written in full success; `None` when unknown.
    written: Option<Policy>,
}

impl RuleMaps {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            rules: open_map(pin_path, map_names::RULES)?,
            set: open_map(pin_path, map_names::RULESET)?,
            ipv4: Tries::open(pin_path, map_names::RULE_SRC, map_names::RULE_DST)?,
            ipv6: Tries::open(pin_path, map_names::RULE_SRC6, map_names::RULE_DST6)?,
            written: None,
        })
    }

    /// Writes `policy` unless it is what was last written. The header is cleared
    /// first and written last, so a new flow meanwhile is balanced, never matched
    /// against half a rule set.
    pub fn write(&mut self, policy: &Policy) -> Result<(), DatapathError> {
        if self.written.as_ref() == Some(policy) {
            return Ok(());
        }
        self.written = None;
        self.set
            .set(0, &RuleSet::default(), 0)
            .map_err(map_error(map_names::RULESET))?;
        for index in 0..MAX_RULES {
            let rule = policy
                .rules
                .get(index as usize)
                .copied()
                .unwrap_or_default();
            self.rules
                .set(index, &rule, 0)
                .map_err(map_error(map_names::RULES))?;
        }
        self.ipv4.src.write(&policy.src)?;
        self.ipv4.dst.write(&policy.dst)?;
        self.ipv6.src.write(&policy.src)?;
        self.ipv6.dst.write(&policy.dst)?;
        self.set
            .set(0, &policy.set, 0)
            .map_err(map_error(map_names::RULESET))?;
        self.written = Some(policy.clone());
        Ok(())
    }

    /// What the maps hold, read back.
    pub fn read(&self) -> Result<Policy, DatapathError> {
        let set = self.set.get(&0, 0).map_err(map_error(map_names::RULESET))?;
        let count = u64::BITS - set.present.leading_zeros();
        let rules = (0..count)
            .map(|index| self.rules.get(&index, 0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error(map_names::RULES))?;
        let mut src = self.ipv4.src.read()?;
        src.extend(self.ipv6.src.read()?);
        let mut dst = self.ipv4.dst.read()?;
        dst.extend(self.ipv6.dst.read()?);
        Ok(Policy {
            rules,
            set,
            src,
            dst,
        })
    }

    /// Where the maps differ from `policy`, in words (empty when they match);
    /// forgets what was written when they do.
    pub fn differences(&mut self, policy: &Policy) -> Result<Option<String>, DatapathError> {
        let held = self.read()?;
        if &held == policy {
            return Ok(None);
        }
        self.written = None;
        Ok(Some(format!(
            "policy rules: {} rules and {} prefixes held, {} and {} planned",
            held.rules.len(),
            held.src.len() + held.dst.len(),
            policy.rules.len(),
            policy.src.len() + policy.dst.len()
        )))
    }
}
