//! An LPM trie map of one address family as userspace keeps it: read whole,
//! brought to a wanted set of prefixes by removing and inserting the difference.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    Pod,
    maps::{
        MapData,
        lpm_trie::{Key, LpmTrie},
    },
};

use crate::apply::datapath::{
    error::{DatapathError, map_error},
    sys::open_map,
};
use crate::net::{IpNet, Ipv4Net, Ipv6Net};

/// One prefix trie: `N` address bytes (4 or 16), values of type `V`.
pub(super) struct Trie<const N: usize, V = u64> {
    map: LpmTrie<MapData, [u8; N], V>,
    name: &'static str,
}

impl<const N: usize, V: Pod + PartialEq> Trie<N, V> {
    pub(super) fn open(pin_path: &Path, name: &'static str) -> Result<Self, DatapathError> {
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

    pub(super) fn read(&self) -> Result<BTreeMap<IpNet, V>, DatapathError> {
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
    pub(super) fn write(&mut self, wanted: &BTreeMap<IpNet, V>) -> Result<(), DatapathError> {
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
