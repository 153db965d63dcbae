//! The direct destinations' tries (`MR_DIRECT`, `MR_DIRECT6`): what the classifier
//! leaves unmarked, to the main table (see `Plan::direct`). Brought to the plan
//! when the main table's specific routes or the router's addresses change.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use multiroute_ebpf::map_names;

use super::prefix_trie::Trie;
use crate::apply::datapath::error::DatapathError;
use crate::net::IpNet;

pub struct DirectTries {
    v4: Trie<4, u8>,
    v6: Trie<16, u8>,
    /// The set as last written in full success; `None` when unknown (a fresh
    /// handle, a failed write, a difference found by [`DirectTries::differences`]).
    written: Option<BTreeSet<IpNet>>,
}

impl DirectTries {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            v4: Trie::open(pin_path, map_names::DIRECT)?,
            v6: Trie::open(pin_path, map_names::DIRECT6)?,
            written: None,
        })
    }

    /// What the tries hold, both families, read back.
    fn read(&self) -> Result<BTreeSet<IpNet>, DatapathError> {
        let mut held: BTreeSet<IpNet> = self.v4.read()?.into_keys().collect();
        held.extend(self.v6.read()?.into_keys());
        Ok(held)
    }

    /// Brings both tries to `direct` (each takes its family's prefixes); returns
    /// the set they held before, or `None` when it was `direct` already (then
    /// nothing is written). What was last written stands for what they hold, so
    /// an unchanged set costs no map access.
    pub fn write(
        &mut self,
        direct: &BTreeSet<IpNet>,
    ) -> Result<Option<BTreeSet<IpNet>>, DatapathError> {
        let held = match self.written.take() {
            Some(written) => written,
            None => self.read()?,
        };
        if &held == direct {
            self.written = Some(held);
            return Ok(None);
        }
        // The value is unused: a hit is the answer.
        let wanted: BTreeMap<IpNet, u8> = direct.iter().map(|net| (*net, 1)).collect();
        self.v4.write(&wanted)?;
        self.v6.write(&wanted)?;
        self.written = Some(direct.clone());
        Ok(Some(held))
    }

    /// Where the tries differ from `direct`, in words; forgets what was written
    /// when they do.
    pub fn differences(
        &mut self,
        direct: &BTreeSet<IpNet>,
    ) -> Result<Option<String>, DatapathError> {
        let held = self.read()?;
        if &held == direct {
            return Ok(None);
        }
        self.written = None;
        Ok(Some(format!(
            "{} direct destinations held, {} planned",
            held.len(),
            direct.len()
        )))
    }
}

/// A change of the direct set: which flows it re-classifies.
pub struct DirectChange<'a> {
    /// Prefixes that joined or left the set: only a destination inside one of
    /// them can have changed sides.
    changed: BTreeSet<IpNet>,
    after: &'a BTreeSet<IpNet>,
}

impl<'a> DirectChange<'a> {
    /// `None` when nothing changed.
    pub fn between(before: &BTreeSet<IpNet>, after: &'a BTreeSet<IpNet>) -> Option<Self> {
        let changed: BTreeSet<IpNet> = before.symmetric_difference(after).copied().collect();
        (!changed.is_empty()).then_some(Self { changed, after })
    }

    /// A flow to `dst`, remembered as direct or not, is now on the wrong side:
    /// forgotten, its next packet is classified afresh.
    pub fn moves(&self, dst: IpAddr, is_direct: bool) -> bool {
        let host = IpNet::host(dst);
        self.changed.iter().any(|net| net.covers(host))
            && self.after.iter().any(|net| net.covers(host)) != is_direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(nets: &[&str]) -> BTreeSet<IpNet> {
        use crate::net::Ipv4Net;
        nets.iter()
            .map(|net| IpNet::V4(net.parse::<Ipv4Net>().unwrap()))
            .collect()
    }

    #[test]
    fn only_flows_whose_side_changed_move() {
        let before = set(&["192.0.2.0/24", "10.0.0.0/8"]);
        let after = set(&[
            "192.0.2.0/24",
            "10.0.0.0/8",
            "10.8.0.0/24",
            "198.51.100.0/24",
        ]);
        assert!(DirectChange::between(&before, &before).is_none());
        let change = DirectChange::between(&before, &after).unwrap();
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        // A steered flow into a new route moves to the main table.
        assert!(change.moves(addr("198.51.100.7"), false));
        // A direct flow stays direct, inside a new prefix or not.
        assert!(!change.moves(addr("10.8.0.5"), true));
        assert!(!change.moves(addr("192.0.2.9"), true));
        // A steered flow elsewhere stays where it is.
        assert!(!change.moves(addr("203.0.113.1"), false));
        // The route goes away again: its direct flows are steered afresh.
        let back = DirectChange::between(&after, &before).unwrap();
        assert!(back.moves(addr("198.51.100.7"), true));
        assert!(!back.moves(addr("10.8.0.5"), true));
        assert!(!back.moves(addr("2001:db8::1"), false));
    }
}
