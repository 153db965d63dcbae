//! Stable uplink slots. An uplink's slot decides its datapath index, fwmark and
//! routing table, and every flow in the flow table names its uplink by slot. So a
//! slot must never change while the uplink exists: not when a reload adds or removes
//! other uplinks, not when the daemon restarts (the assignment is kept in the pinned
//! `MR_SLOTS` map). A fresh start assigns slots in config order, so uplink `i` gets
//! table `table_base + i + 1` as PRODUCT.md says.
use std::collections::{BTreeMap, BTreeSet};

/// Uplink name → slot.
pub type Slots = BTreeMap<String, u32>;

/// Keeps every still-configured uplink in its previous slot; a new uplink takes the
/// lowest slot no uplink held before or holds now (so a slot freed by this very
/// change is not handed to a newcomer, whose flows would inherit the removed
/// uplink's), falling back to the lowest slot free now. `capacity` bounds the slots.
pub fn assign<'a>(
    previous: &Slots,
    names: impl IntoIterator<Item = &'a str>,
    capacity: u32,
) -> Slots {
    let names: Vec<&str> = names.into_iter().collect();
    let mut slots: Slots = names
        .iter()
        .filter_map(|&name| Some((name.to_owned(), *previous.get(name)?)))
        .collect();
    for name in names {
        if slots.contains_key(name) {
            continue;
        }
        let taken: BTreeSet<u32> = slots.values().copied().collect();
        let held_before: BTreeSet<u32> = previous.values().copied().collect();
        let free = (0..capacity).filter(|s| !taken.contains(s));
        let slot = free
            .clone()
            .find(|s| !held_before.contains(s))
            .or_else(|| free.clone().next());
        if let Some(slot) = slot {
            slots.insert(name.to_owned(), slot);
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(pairs: &[(&str, u32)]) -> Slots {
        pairs.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn fresh_start_is_config_order() {
        assert_eq!(
            assign(&Slots::new(), ["dsl", "cable", "lte"], 64),
            slots(&[("dsl", 0), ("cable", 1), ("lte", 2)])
        );
    }

    #[test]
    fn kept_uplinks_keep_their_slots_whatever_the_order() {
        let before = slots(&[("dsl", 0), ("cable", 1), ("lte", 2)]);
        assert_eq!(
            assign(&before, ["lte", "dsl"], 64),
            slots(&[("dsl", 0), ("lte", 2)])
        );
    }

    #[test]
    fn a_newcomer_does_not_inherit_a_slot_freed_in_the_same_change() {
        let before = slots(&[("dsl", 0), ("cable", 1)]);
        assert_eq!(
            assign(&before, ["cable", "lte"], 64),
            slots(&[("cable", 1), ("lte", 2)])
        );
        // Once the old owner is gone for good, its slot is reused.
        let now = slots(&[("cable", 1), ("lte", 2)]);
        assert_eq!(assign(&now, ["cable", "lte", "wifi"], 64)["wifi"], 0);
    }

    #[test]
    fn full_capacity_falls_back_to_any_free_slot() {
        let before = slots(&[("a", 0), ("b", 1)]);
        assert_eq!(assign(&before, ["b", "c"], 2), slots(&[("b", 1), ("c", 0)]));
    }
}
