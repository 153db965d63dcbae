//! Weighted Maglev lookup table (Eisenbud et al., NSDI '16), as Katran builds it in
//! userspace: every uplink walks its own permutation of the slots and claims free
//! ones in turn, claiming in proportion to its weight. The datapath only indexes the
//! result, so weights and liveness change the table, never the program. An uplink's
//! permutation depends on its name alone, so adding or removing another uplink
//! moves few slots (and the flow table keeps every existing flow anyway).
use multiroute_ebpf::NO_UPLINK;

/// One uplink's claim on the ring: `index` is what the slots will hold.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub index: u32,
    pub name: &'a str,
    pub weight: u32,
}

/// Builds a ring of `size` slots (prime). Members with weight 0 get no slot; with no
/// weighted member every slot is [`NO_UPLINK`].
pub fn build_ring(members: &[Member<'_>], size: u32) -> Vec<u32> {
    let mut ring = vec![NO_UPLINK; size as usize];
    let members: Vec<_> = members.iter().filter(|m| m.weight > 0).collect();
    let Some(max_weight) = members.iter().map(|m| m.weight).max() else {
        return ring;
    };
    let size64 = u64::from(size);
    let mut walkers: Vec<Walker> = members
        .iter()
        .map(|m| Walker {
            offset: fnv1a(m.name, 0x5bd1_e995) % size64,
            skip: fnv1a(m.name, 0x1b87_3593) % (size64 - 1) + 1,
            next: 0,
            credit: 0,
        })
        .collect();
    let mut filled = 0u32;
    while filled < size {
        for (member, walker) in members.iter().zip(walkers.iter_mut()) {
            // Integer credit: the heaviest member claims one slot per round, the
            // others weight/max_weight of a slot.
            walker.credit += member.weight;
            while walker.credit >= max_weight && filled < size {
                walker.credit -= max_weight;
                let slot = walker.next_free(&ring, size64);
                ring[slot] = member.index;
                filled += 1;
            }
        }
    }
    ring
}

struct Walker {
    offset: u64,
    skip: u64,
    next: u64,
    credit: u32,
}

impl Walker {
    fn next_free(&mut self, ring: &[u32], size: u64) -> usize {
        loop {
            let slot = ((self.offset + self.next * self.skip) % size) as usize;
            self.next += 1;
            if ring[slot] == NO_UPLINK {
                return slot;
            }
        }
    }
}

fn fnv1a(text: &str, seed: u64) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325 ^ seed, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u32 = 65_537;

    fn shares(ring: &[u32], n: u32) -> Vec<f64> {
        (0..n)
            .map(|i| ring.iter().filter(|&&x| x == i).count() as f64 / ring.len() as f64)
            .collect()
    }

    #[test]
    fn slots_follow_weights() {
        let members = [
            Member {
                index: 0,
                name: "dsl",
                weight: 1,
            },
            Member {
                index: 1,
                name: "cable",
                weight: 2,
            },
            Member {
                index: 2,
                name: "lte",
                weight: 3,
            },
        ];
        let ring = build_ring(&members, SIZE);
        let got = shares(&ring, 3);
        for (share, want) in got.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((share - want).abs() < 0.001, "{got:?}");
        }
    }

    #[test]
    fn drained_and_absent_members_get_nothing() {
        let members = [
            Member {
                index: 0,
                name: "a",
                weight: 0,
            },
            Member {
                index: 1,
                name: "b",
                weight: 5,
            },
        ];
        assert!(build_ring(&members, SIZE).iter().all(|&x| x == 1));
        assert!(build_ring(&[], SIZE).iter().all(|&x| x == NO_UPLINK));
    }

    #[test]
    fn removing_a_member_moves_few_other_slots() {
        let three = [
            Member {
                index: 0,
                name: "a",
                weight: 1,
            },
            Member {
                index: 1,
                name: "b",
                weight: 1,
            },
            Member {
                index: 2,
                name: "c",
                weight: 1,
            },
        ];
        let before = build_ring(&three, SIZE);
        let after = build_ring(&three[..2], SIZE);
        // Slots of "a" and "b" that changed owner although their owner is still there.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != 2 && b != a)
            .count();
        assert!(
            (moved as f64) < 0.05 * f64::from(SIZE),
            "{moved} slots of surviving uplinks moved"
        );
    }
}
