//! One family's Maglev ring map.
use std::path::Path;

use aya::maps::MapData;
use multiroute_ebpf::RING_SIZE;

use crate::apply::datapath::{
    error::{DatapathError, map_error},
    sys::{lookup_all, update_batch},
};

/// One family's Maglev ring, read and written in batches (see [`map_batch`]),
/// which aya 0.16's `Array` lacks.
pub(super) struct Ring {
    map: MapData,
    name: &'static str,
    /// The ring as last written in full success; `None` when unknown (a fresh
    /// handle, or a write that failed half-way), so the next write is complete.
    written: Option<Vec<u32>>,
}

impl Ring {
    pub(super) fn open(pin_path: &Path, name: &'static str) -> Result<Self, DatapathError> {
        Ok(Self {
            map: MapData::from_pin(pin_path.join(name)).map_err(map_error(name))?,
            name,
            written: None,
        })
    }

    /// Writes only the slots that differ from what was last written in full, or
    /// every slot when that is unknown. A failed write forgets what was written,
    /// so the next one is complete.
    pub(super) fn write(&mut self, ring: &[u32]) -> Result<(), DatapathError> {
        let previous = self.written.take();
        let (keys, values): (Vec<u32>, Vec<u32>) = ring
            .iter()
            .enumerate()
            .filter(|(slot, index)| previous.as_ref().and_then(|r| r.get(*slot)) != Some(index))
            .map(|(slot, index)| (slot as u32, *index))
            .unzip();
        update_batch(&self.map, &keys, &values).map_err(|source| DatapathError::Batch {
            name: self.name,
            source,
        })?;
        self.written = Some(ring.to_vec());
        Ok(())
    }

    /// How many slots the kernel holds differently from `planned` (the kernel's
    /// own ring is read, not what we believe we wrote).
    pub(super) fn differing_slots(&mut self, planned: &[u32]) -> Result<usize, DatapathError> {
        let held = lookup_all(&self.map, RING_SIZE).map_err(|source| DatapathError::Batch {
            name: self.name,
            source,
        })?;
        let wrong = held.iter().zip(planned).filter(|(a, b)| a != b).count();
        if wrong > 0 {
            self.written = None;
        }
        Ok(wrong)
    }
}
