//! The classifier in the kernel: loading it, attaching it to the LAN interfaces
//! (and the fast path's reply program to the uplinks), writing the plan into its
//! maps, and removing it.
//!
//! Everything lives under `pin_path` on a bpffs: the maps (pinned by name, so a new
//! `load` reuses the running flow table instead of creating an empty one) and one TCX
//! link per LAN interface (`link-<ifname>`; the pin keeps the classifier attached when
//! the daemon dies, and deleting it detaches the classifier at once).
//!
//! `error` says what went wrong; `sys` holds the raw bpf(2) batch calls, bpffs and
//! the clock; `loader` loads, attaches and pins the classifier; `maps/` writes the
//! plan into its maps and reads them back. Each imports only those below it.
mod error;
mod loader;
pub mod maps;
mod sys;

pub use error::DatapathError;
pub use loader::{
    Capacity, Datapath, affinity_capacity, attached_interfaces, remove, replies_attached,
};
pub use maps::{Maps, Seeding, fast, not_carrying, read_slots};
pub use sys::{is_bpffs, monotonic_seconds, prepare_pin_path};
