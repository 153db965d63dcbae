//! How an uplink's slot becomes its routing table and its fwmark, and what the
//! mark mask leaves room for: what `[routing]` means, so validation (room for the
//! uplinks) and the plan read the same numbers. Slots never change while an uplink
//! exists, so neither do its numbers.

/// The numbering `[routing]` sets: `table_base` and `fwmark_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numbering {
    table_base: u32,
    mask: u32,
}

impl Numbering {
    pub fn new(table_base: u32, fwmark_mask: u32) -> Self {
        Self {
            table_base,
            mask: fwmark_mask,
        }
    }

    /// The mark of slot `slot`: `slot + 1` placed at the lowest set bit of the
    /// mask, so mark 0 always means "not steered".
    pub fn mark(self, slot: u32) -> u32 {
        (slot + 1) << self.mask.trailing_zeros()
    }

    /// The slot a mark (ours, possibly with the inbound flag) names.
    pub fn slot_of_mark(self, mark: u32) -> Option<u32> {
        let number = (mark & self.mask & !self.inbound_flag()) >> self.mask.trailing_zeros();
        number.checked_sub(1)
    }

    /// Routing table of slot `slot`, as PRODUCT.md fixes it.
    pub fn table(self, slot: u32) -> u32 {
        self.table_base + slot + 1
    }

    /// Where the original main-table default routes are kept while multiroute
    /// replaces them, so a later `unload` (even after SIGKILL) can restore them.
    pub fn saved_default_table(self) -> u32 {
        self.table_base
    }

    /// The mark bit that flags replies to connections which arrived on an uplink
    /// (set from the conntrack mark, see `nft`): the top bit of the mask's lowest
    /// contiguous run, which uplink marks never reach.
    pub fn inbound_flag(self) -> u32 {
        1 << (self.mask.trailing_zeros() + mask_run_bits(self.mask) - 1)
    }

    /// How many slots the mask and the datapath's uplink table allow.
    pub fn capacity(self) -> u32 {
        slot_capacity(self.mask)
    }
}

/// Length of the mask's lowest run of contiguous set bits.
fn mask_run_bits(mask: u32) -> u32 {
    (!(mask >> mask.trailing_zeros())).trailing_zeros()
}

/// Slots a non-zero mask allows: marks are (slot + 1) << the mask's lowest bit,
/// below the inbound flag; at most the datapath's uplink table.
pub fn slot_capacity(mask: u32) -> u32 {
    let marks = (1u64 << (mask_run_bits(mask) - 1)) - 1;
    marks.min(u64::from(multiroute_ebpf::MAX_UPLINKS)) as u32
}
