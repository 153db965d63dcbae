//! The policy rules' maps (see `plan::policy`): the rules, the set's header, and a
//! source and a destination prefix trie per family. Written as a whole when the
//! rule set changes (a reload, an uplink changing slot), read back whole to verify.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{
    Array, MapData,
    lpm_trie::{Key, LpmTrie},
};
use multiroute_ebpf::{MAX_RULES, PolicyRule, RuleSet, map_names};

use super::datapath::{DatapathError, map_error, open_map};
use crate::{
    net::{IpNet, Ipv4Net, Ipv6Net},
    plan::Policy,
};

/// One prefix trie: `N` address bytes (4 or 16), rule bitmaps as values.
struct Trie<const N: usize> {
    map: LpmTrie<MapData, [u8; N], u64>,
    name: &'static str,
}

impl<const N: usize> Trie<N> {
    fn open(pin_path: &Path, name: &'static str) -> Result<Self, DatapathError> {
        Ok(Self {
            map: open_map(pin_path, name)?,
            name,
        })
    }

    fn key(net: &IpNet) -> Option<Key<[u8; N]>> {
        let octets: Vec<u8> = match net {
            IpNet::V4(net) => net.addr.octets().to_vec(),
            IpNet::V6(net) => net.addr.octets().to_vec(),
        };
        Some(Key::new(
            u32::from(net.prefix_len()),
            octets.try_into().ok()?,
        ))
    }

    fn net(key: &Key<[u8; N]>) -> Option<IpNet> {
        let len = u8::try_from(key.prefix_len()).ok()?;
        let data = key.data();
        Some(match N {
            4 => IpNet::V4(Ipv4Net::new(
                Ipv4Addr::from(<[u8; 4]>::try_from(&data[..]).ok()?),
                len,
            )),
            _ => IpNet::V6(Ipv6Net::new(
                Ipv6Addr::from(<[u8; 16]>::try_from(&data[..]).ok()?),
                len,
            )),
        })
    }

    fn read(&self) -> Result<BTreeMap<IpNet, u64>, DatapathError> {
        let mut held = BTreeMap::new();
        for entry in self.map.iter() {
            let (key, bits) = entry.map_err(map_error(self.name))?;
            if let Some(net) = Self::net(&key) {
                held.insert(net, bits);
            }
        }
        Ok(held)
    }

    /// Brings the trie to the entries of `wanted` its keys fit (the other
    /// family's are the other trie's).
    fn write(&mut self, wanted: &BTreeMap<IpNet, u64>) -> Result<(), DatapathError> {
        let wanted: BTreeMap<_, _> = wanted
            .iter()
            .filter(|(net, _)| Self::key(net).is_some())
            .collect();
        let held = self.read()?;
        for net in held.keys().filter(|net| !wanted.contains_key(net)) {
            if let Some(key) = Self::key(net) {
                self.map.remove(&key).map_err(map_error(self.name))?;
            }
        }
        for (net, bits) in wanted {
            if let (Some(key), true) = (Self::key(net), held.get(net) != Some(bits)) {
                self.map
                    .insert(&key, bits, 0)
                    .map_err(map_error(self.name))?;
            }
        }
        Ok(())
    }
}

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
