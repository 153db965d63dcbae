//! The policy rules' four maps (see `plan::policy`): written as a whole when the
//! rule set changes (a reload, an uplink changing slot), read back whole to verify.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use multiroute_ebpf::{MAX_RULES, PolicyRule, RuleAddress, RuleSet, map_names};

use super::datapath::{DatapathError, map_error, open_map};
use crate::{net::Ipv4Net, plan::Policy};

type Trie = LpmTrie<MapData, RuleAddress, u64>;

pub struct RuleMaps {
    rules: Array<MapData, PolicyRule>,
    set: Array<MapData, RuleSet>,
    src: Trie,
    dst: Trie,
    /// The rule set as last written in full success; `None` when unknown.
    written: Option<Policy>,
}

fn trie_key(net: &Ipv4Net) -> Key<RuleAddress> {
    Key::new(u32::from(net.prefix_len), net.addr.octets())
}

impl RuleMaps {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            rules: open_map(pin_path, map_names::RULES)?,
            set: open_map(pin_path, map_names::RULESET)?,
            src: open_map(pin_path, map_names::RULE_SRC)?,
            dst: open_map(pin_path, map_names::RULE_DST)?,
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
        write_trie(&mut self.src, &policy.src, map_names::RULE_SRC)?;
        write_trie(&mut self.dst, &policy.dst, map_names::RULE_DST)?;
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
        Ok(Policy {
            rules,
            set,
            src: read_trie(&self.src, map_names::RULE_SRC)?,
            dst: read_trie(&self.dst, map_names::RULE_DST)?,
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

fn write_trie(
    trie: &mut Trie,
    wanted: &BTreeMap<Ipv4Net, u64>,
    name: &'static str,
) -> Result<(), DatapathError> {
    let held = read_trie(trie, name)?;
    for net in held.keys().filter(|net| !wanted.contains_key(net)) {
        trie.remove(&trie_key(net)).map_err(map_error(name))?;
    }
    for (net, bits) in wanted {
        if held.get(net) != Some(bits) {
            trie.insert(&trie_key(net), bits, 0)
                .map_err(map_error(name))?;
        }
    }
    Ok(())
}

fn read_trie(trie: &Trie, name: &'static str) -> Result<BTreeMap<Ipv4Net, u64>, DatapathError> {
    trie.iter()
        .map(|entry| {
            let (key, bits) = entry.map_err(map_error(name))?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32);
            Ok((Ipv4Net::new(Ipv4Addr::from(key.data()), len), bits))
        })
        .collect()
}
