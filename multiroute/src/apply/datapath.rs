//! The classifier in the kernel: loading it, attaching it to the LAN interfaces,
//! writing the plan into its maps, and removing it.
//!
//! Everything lives under `pin_path` on a bpffs: the maps (pinned by name, so a new
//! `load` reuses the running flow table instead of creating an empty one) and one TCX
//! link per LAN interface (`link-<ifname>`; the pin keeps the classifier attached when
//! the daemon dies, and deleting it detaches the classifier at once).
use std::{
    collections::BTreeSet,
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use multiroute_ebpf::{
    AFFINITY_TABLE_SIZE, COUNTER_COUNT, Counter, FLOOR_PROGRAM_NAME, FLOW_TABLE_SIZE,
    FLOW6_TABLE_SIZE, FlowKey, FlowKey6, MAP_LAYOUT, MAX_UPLINKS, PENDING_UPLINK, PROGRAM_NAME,
    RING_SIZE, SlotName, Traffic, UPGRADABLE_LAYOUTS, Uplink, balance, family, map_names,
};
use tracing::{debug, info};

use super::{
    direct::{DirectChange, DirectTries},
    flow_tables::FlowTables,
    rule_maps::RuleMaps,
};
use crate::{
    net::IpNet,
    path_error::PathError,
    plan::{Plan, slots::Slots},
};

/// The compiled classifier, built by build.rs through aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multiroute"));

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINK_PREFIX: &str = "link-";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("loading the classifier (pins under {path}): {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {name}: batch update: {source}")]
    Batch {
        name: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "the running datapath's maps under {path} have layout {held}; this multiroute needs layout {wanted} and cannot adopt them: run `multiroute unload` (sessions keep their NAT bindings; the next load puts them back on their uplinks from conntrack), then `multiroute load`"
    )]
    Layout {
        path: PathBuf,
        held: u32,
        wanted: u32,
    },
    #[error("{what}: {source}")]
    Link {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io_error(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> DatapathError {
    let at = PathError::at(path, what);
    move |source| DatapathError::Io(at(source))
}

/// Entries the affinity table needs under `[balance] by`: one per LAN host and
/// server (or LAN host), or none to speak of for "connection", which never reads
/// it — 5.5 MiB of kernel memory saved in the default mode.
pub fn affinity_capacity(balance_by: u32) -> u32 {
    if balance_by == balance::CONNECTION {
        1
    } else {
        AFFINITY_TABLE_SIZE
    }
}

/// How many entries the datapath's tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub flows: u32,
    pub flows6: u32,
    pub affinity: u32,
}

impl Capacity {
    /// The defaults, with an affinity table as `[balance] by` (`balance_by`) needs.
    pub fn for_balance(balance_by: u32) -> Self {
        Self {
            flows: FLOW_TABLE_SIZE,
            flows6: FLOW6_TABLE_SIZE,
            affinity: affinity_capacity(balance_by),
        }
    }
}

/// Unpins map `name` if it holds another number of entries than `entries`, so the
/// load creates it afresh at that size (the running program keeps the old one until
/// it is replaced).
fn drop_if_resized(pin_path: &Path, name: &'static str, entries: u32) -> Result<(), DatapathError> {
    let pin = pin_path.join(name);
    if !pin.exists() {
        return Ok(());
    }
    let info = aya::maps::MapInfo::from_pin(&pin).map_err(map_error(name))?;
    if info.max_entries() != entries {
        std::fs::remove_file(&pin).map_err(io_error(&pin, "replacing a resized map"))?;
    }
    Ok(())
}

/// Refuses pinned maps of another layout before anything adopts them (the program
/// would misread them, or fail to verify against them with an obscure error),
/// unless it is one this release upgrades in place.
fn check_layout(pin_path: &Path) -> Result<(), DatapathError> {
    if !pin_path.join(map_names::FLOWS).exists() {
        return Ok(());
    }
    let held = if pin_path.join(map_names::LAYOUT).exists() {
        let layout: Array<MapData, u32> = open_map(pin_path, map_names::LAYOUT)?;
        layout.get(&0, 0).map_err(map_error(map_names::LAYOUT))?
    } else {
        1
    };
    if held == MAP_LAYOUT || UPGRADABLE_LAYOUTS.contains(&held) {
        return Ok(());
    }
    Err(DatapathError::Layout {
        path: pin_path.to_owned(),
        held,
        wanted: MAP_LAYOUT,
    })
}

pub(super) fn map_error(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map {
        name,
        source: Box::new(source),
    }
}

/// True when `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Makes `pin_path` a directory on a bpffs, mounting one on its parent when the parent
/// is not on one (bpffs is not mounted at boot on every distribution).
pub fn prepare_pin_path(pin_path: &Path) -> Result<(), DatapathError> {
    let parent = pin_path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io_error(parent, "creating the bpffs mount point"))?;
    if !is_bpffs(parent) {
        info!(path = %parent.display(), "mounting a bpffs");
        let target = CString::new(parent.as_os_str().as_bytes()).map_err(|_| {
            io_error(parent, "path with a NUL byte")(io::ErrorKind::InvalidInput.into())
        })?;
        // SAFETY: all pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io_error(parent, "mounting a bpffs")(
                io::Error::last_os_error(),
            ));
        }
    }
    std::fs::create_dir_all(pin_path).map_err(io_error(pin_path, "creating the pin directory"))
}

/// The loaded classifier, its maps pinned under `pin_path`.
pub struct Datapath {
    ebpf: Ebpf,
    pin_path: PathBuf,
}

impl Datapath {
    /// Loads the classifier, reusing maps already pinned under `pin_path` (a running
    /// flow table survives a daemon restart this way), with an affinity table as
    /// `[balance] by` (`balance_by`) needs.
    pub fn load(pin_path: &Path, balance_by: u32) -> Result<Self, DatapathError> {
        Self::load_sized(pin_path, Capacity::for_balance(balance_by))
    }

    /// [`Datapath::load`] with a flow table of `flows` entries (benchmarks size it
    /// to a million; an adopted, pinned table keeps its size) and an affinity table
    /// of `affinity` (a pinned one of another size is replaced: the mode changed).
    pub fn load_sized(pin_path: &Path, capacity: Capacity) -> Result<Self, DatapathError> {
        prepare_pin_path(pin_path)?;
        check_layout(pin_path)?;
        drop_if_resized(pin_path, map_names::AFFINITY, capacity.affinity)?;
        drop_if_resized(pin_path, map_names::AFFINITY6, capacity.affinity)?;
        // An upgrade from layout 2: one counter more per family.
        drop_if_resized(pin_path, map_names::COUNTERS, COUNTER_COUNT * family::COUNT)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_path)
            .map_max_entries(map_names::FLOWS, capacity.flows)
            .map_max_entries(map_names::FLOWS6, capacity.flows6)
            .map_max_entries(map_names::AFFINITY, capacity.affinity)
            .map_max_entries(map_names::AFFINITY6, capacity.affinity)
            .load(OBJECT)
            .map_err(|source| DatapathError::Load {
                path: pin_path.to_owned(),
                source: Box::new(source),
            })?;
        let classifier = classifier(&mut ebpf)?;
        classifier.load().map_err(|source| DatapathError::Program {
            what: "verifying the classifier".into(),
            source: Box::new(source),
        })?;
        let mut layout: Array<MapData, u32> = open_map(pin_path, map_names::LAYOUT)?;
        layout
            .set(0, &MAP_LAYOUT, 0)
            .map_err(map_error(map_names::LAYOUT))?;
        Ok(Self {
            ebpf,
            pin_path: pin_path.to_owned(),
        })
    }

    pub fn classifier(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        classifier(&mut self.ebpf)
    }

    /// The empty classifier shipped in the same object, loaded on first use: the
    /// floor benchmarks compare against.
    pub fn floor_program(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        let floor = program(&mut self.ebpf, FLOOR_PROGRAM_NAME)?;
        if floor.fd().is_err() {
            floor.load().map_err(|source| DatapathError::Program {
                what: "verifying the floor program".into(),
                source: Box::new(source),
            })?;
        }
        Ok(floor)
    }

    /// Attaches to the ingress of every LAN interface, atomically replacing the program
    /// behind a link a previous `load` pinned, and detaches from interfaces no longer
    /// listed.
    pub fn attach(&mut self, lan: &[(String, u32)]) -> Result<(), DatapathError> {
        let pin_path = self.pin_path.clone();
        for (name, index) in lan {
            let link_pin = link_pin_path(&pin_path, name);
            if link_pin.exists() {
                match self.replace_program(&link_pin) {
                    Ok(()) => {
                        debug!(interface = %name, "replaced the program behind the pinned link");
                        continue;
                    }
                    Err(err) => {
                        info!(interface = %name, "re-attaching: the pinned link is unusable ({err})");
                        std::fs::remove_file(&link_pin)
                            .map_err(io_error(&link_pin, "removing a stale link pin"))?;
                    }
                }
            }
            let classifier = self.classifier()?;
            let program_error = |what: String| {
                move |source| DatapathError::Program {
                    what,
                    source: Box::new(source),
                }
            };
            let link_id = classifier
                .attach(*index, TcAttachType::Ingress)
                .map_err(program_error(format!("attaching to the ingress of {name}")))?;
            let link = classifier
                .take_link(link_id)
                .map_err(program_error(format!("taking the link on {name}")))?;
            let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                what: format!("link on {name} is not a TCX link"),
                source: Box::new(source),
            })?;
            link.pin(&link_pin).map_err(|source| DatapathError::Link {
                what: format!("pinning the link on {name} at {}", link_pin.display()),
                source: Box::new(source),
            })?;
            info!(interface = %name, "classifier attached (TCX ingress)");
        }
        for stale in link_pins(&pin_path)? {
            let listed = lan
                .iter()
                .any(|(name, _)| link_pin_path(&pin_path, name) == stale);
            if !listed {
                std::fs::remove_file(&stale).map_err(io_error(&stale, "detaching"))?;
            }
        }
        Ok(())
    }

    fn replace_program(
        &mut self,
        link_pin: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let link = FdLink::from(PinnedLink::from_pin(link_pin)?);
        let link = SchedClassifierLink::try_from(link)?;
        self.classifier()?.attach_to_link(link)?;
        Ok(())
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    program(ebpf, PROGRAM_NAME)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier, DatapathError> {
    let missing = || DatapathError::Program {
        what: format!("the object has no classifier named {name}"),
        source: Box::new(aya::programs::ProgramError::NotLoaded),
    };
    let program = ebpf.program_mut(name).ok_or_else(missing)?;
    program.try_into().map_err(|source| DatapathError::Program {
        what: format!("{name} is not a TC classifier"),
        source: Box::new(source),
    })
}

fn link_pin_path(pin_path: &Path, interface: &str) -> PathBuf {
    pin_path.join(format!("{LINK_PREFIX}{interface}"))
}

fn link_pins(pin_path: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    pin_entries(pin_path).map(|entries| {
        entries
            .into_iter()
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.as_bytes().starts_with(LINK_PREFIX.as_bytes()))
            })
            .collect()
    })
}

fn pin_entries(pin_path: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    match std::fs::read_dir(pin_path) {
        Ok(entries) => entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_error(pin_path, "listing pins")),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(io_error(pin_path, "listing pins")(err)),
    }
}

/// Detaches the classifier (link pins first, so steering stops before the maps go)
/// and removes every pin and the pin directory. Returns how many pins it removed.
pub fn remove(pin_path: &Path) -> Result<usize, DatapathError> {
    let links = link_pins(pin_path)?;
    let mut removed = 0;
    for path in links
        .iter()
        .chain(pin_entries(pin_path)?.iter().filter(|p| !links.contains(p)))
    {
        match std::fs::remove_file(path) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(path, "removing a pin")(err)),
        }
    }
    match std::fs::remove_dir(pin_path) {
        Ok(()) => Ok(removed),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(err) => Err(io_error(pin_path, "removing the pin directory")(err)),
    }
}

/// Names of interfaces the classifier is pinned to under `pin_path`.
pub fn attached_interfaces(pin_path: &Path) -> Result<Vec<String>, DatapathError> {
    Ok(link_pins(pin_path)?
        .iter()
        .filter_map(|path| {
            path.file_name()?
                .to_str()?
                .strip_prefix(LINK_PREFIX)
                .map(str::to_owned)
        })
        .collect())
}

/// What [`Maps::seed`] does with a flow the table already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seeding {
    /// Keeps the datapath's choice (taking over: the flows it placed are new).
    FillGaps,
    /// Puts the flow where its NAT binding is (an address arrived: conntrack is
    /// the truth about sessions that ran elsewhere).
    Replace,
}

/// The datapath's maps, opened from their pins: the same view for the daemon that
/// loaded them, for `status`/`flows`, and for tests.
pub struct Maps {
    /// IPv4's flow and affinity tables.
    pub v4: FlowTables<FlowKey>,
    /// IPv6's.
    pub v6: FlowTables<FlowKey6>,
    ring: Ring,
    ring6: Ring,
    uplinks: Array<MapData, Uplink>,
    traffic: PerCpuArray<MapData, Traffic>,
    counters: PerCpuArray<MapData, u64>,
    slots: Array<MapData, SlotName>,
    /// `[balance] by`, one entry.
    balance: Array<MapData, u32>,
    rules: RuleMaps,
    direct: DirectTries,
}

/// One family's Maglev ring, read and written in batches (see [`map_batch`]),
/// which aya 0.16's `Array` lacks.
struct Ring {
    map: MapData,
    name: &'static str,
    /// The ring as last written in full success; `None` when unknown (a fresh
    /// handle, or a write that failed half-way), so the next write is complete.
    written: Option<Vec<u32>>,
}

impl Ring {
    fn open(pin_path: &Path, name: &'static str) -> Result<Self, DatapathError> {
        Ok(Self {
            map: MapData::from_pin(pin_path.join(name)).map_err(map_error(name))?,
            name,
            written: None,
        })
    }

    /// Writes only the slots that differ from what was last written in full, or
    /// every slot when that is unknown. A failed write forgets what was written,
    /// so the next one is complete.
    fn write(&mut self, ring: &[u32]) -> Result<(), DatapathError> {
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
    fn differing_slots(&mut self, planned: &[u32]) -> Result<usize, DatapathError> {
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

/// `union bpf_attr` as the `BPF_MAP_*_BATCH` commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

fn map_batch(command: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` points at keys and values (and batch tokens) that outlive the
    // call, sized for `attr.count` entries; the kernel writes back only what the
    // command documents (`count`, the values, the out token).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn map_fd(map: &MapData) -> u32 {
    use std::os::fd::{AsFd, AsRawFd};
    map.fd().as_fd().as_raw_fd() as u32
}

/// Writes `values[i]` at `keys[i]` in one bpf(2) call (kernel ≥ 5.6): a ring
/// rebuild after a failure touches tens of thousands of slots, and one syscall each
/// cost ~50 ms of failover time.
fn update_batch(map: &MapData, keys: &[u32], values: &[u32]) -> io::Result<()> {
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        map_batch(BPF_MAP_UPDATE_BATCH, &mut attr)?;
        done += attr.count as usize;
    }
    Ok(())
}

/// Reads a whole `u32` array map of `size` entries in as few bpf(2) calls as the
/// kernel allows (one, for the ring).
fn lookup_all(map: &MapData, size: u32) -> io::Result<Vec<u32>> {
    let mut keys = vec![0u32; size as usize];
    let mut values = vec![0u32; size as usize];
    let mut done = 0usize;
    let mut token = 0u32;
    while done < size as usize {
        let mut attr = BatchAttr {
            in_batch: if done == 0 {
                0
            } else {
                &token as *const u32 as u64
            },
            out_batch: &mut token as *mut u32 as u64,
            keys: keys[done..].as_mut_ptr() as u64,
            values: values[done..].as_mut_ptr() as u64,
            count: (size as usize - done) as u32,
            map_fd: map_fd(map),
            ..BatchAttr::default()
        };
        let result = map_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        done += attr.count as usize;
        match result {
            Ok(()) => {}
            // The end of the map: `count` says how much the last call read.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => break,
            Err(err) => return Err(err),
        }
    }
    let mut ring = vec![0; size as usize];
    for (key, value) in keys.into_iter().zip(values).take(done) {
        if let Some(slot) = ring.get_mut(key as usize) {
            *slot = value;
        }
    }
    Ok(ring)
}

/// CLOCK_MONOTONIC in seconds: the clock of the datapath's flow timestamps.
pub fn monotonic_seconds() -> u32 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u32
}

/// The slot assignment a loaded datapath holds; empty when nothing is pinned.
pub fn read_slots(pin_path: &Path) -> Result<Slots, DatapathError> {
    if !pin_path.join(map_names::SLOTS).exists() {
        return Ok(Slots::new());
    }
    let names: Array<MapData, SlotName> = open_map(pin_path, map_names::SLOTS)?;
    let mut slots = Slots::new();
    for slot in 0..MAX_UPLINKS {
        let name = names.get(&slot, 0).map_err(map_error(map_names::SLOTS))?;
        let len = name
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name.bytes.len());
        if let Ok(name) = std::str::from_utf8(&name.bytes[..len])
            && !name.is_empty()
        {
            slots.insert(name.to_owned(), slot);
        }
    }
    Ok(slots)
}

/// Uplinks the running datapath holds as not alive (dead by probes, or not ready):
/// what a restarted daemon presumes until probes say otherwise.
pub fn presumed_dead(pin_path: &Path) -> Result<std::collections::BTreeSet<String>, DatapathError> {
    let uplinks: Array<MapData, Uplink> = open_map(pin_path, map_names::UPLINKS)?;
    let mut dead = std::collections::BTreeSet::new();
    for (name, slot) in read_slots(pin_path)? {
        let uplink = uplinks
            .get(&slot, 0)
            .map_err(map_error(map_names::UPLINKS))?;
        if uplink.alive == 0 {
            dead.insert(name);
        }
    }
    Ok(dead)
}

/// What the plan wants in uplink slot `index`: all zero (not alive) when unused.
fn planned_uplink(plan: &Plan, index: u32) -> Uplink {
    plan.datapath_uplinks
        .get(index as usize)
        .copied()
        .unwrap_or_default()
}

fn slot_name(name: &str) -> SlotName {
    let mut bytes = [0; 16];
    // Config validation keeps names to 15 bytes, leaving the NUL.
    let len = name.len().min(15);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    SlotName { bytes }
}

pub(super) fn open_map<T>(pin_path: &Path, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_path.join(name)).map_err(map_error(name))?;
    let map = Map::from_map_data(data).map_err(map_error(name))?;
    T::try_from(map).map_err(map_error(name))
}

impl Maps {
    pub fn open(pin_path: &Path) -> Result<Self, DatapathError> {
        Ok(Self {
            v4: FlowTables::open(pin_path, map_names::FLOWS, map_names::AFFINITY)?,
            v6: FlowTables::open(pin_path, map_names::FLOWS6, map_names::AFFINITY6)?,
            ring: Ring::open(pin_path, map_names::RING)?,
            ring6: Ring::open(pin_path, map_names::RING6)?,
            uplinks: open_map(pin_path, map_names::UPLINKS)?,
            traffic: open_map(pin_path, map_names::TRAFFIC)?,
            counters: open_map(pin_path, map_names::COUNTERS)?,
            slots: open_map(pin_path, map_names::SLOTS)?,
            balance: open_map(pin_path, map_names::BALANCE)?,
            rules: RuleMaps::open(pin_path)?,
            direct: DirectTries::open(pin_path)?,
        })
    }

    /// Writes the plan's uplinks and rings. Uplinks first: a ring slot must never
    /// point at an uplink the datapath does not know yet, and a dead uplink's flows
    /// move (and new flows stop landing on it) from that one write on.
    pub fn write_plan(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        self.write_uplinks(plan)?;
        self.write_direct(&plan.direct)?;
        self.write_ring(&plan.ring)?;
        self.write_ring6(&plan.ring6)?;
        self.write_policy(&plan.policy)
    }

    /// The destinations the classifier leaves to the main table; when they
    /// changed, the flows that changed sides are forgotten (a steered flow into a
    /// new VPN route must not keep its uplink's mark, which now skips the main
    /// table). Returns how many.
    pub fn write_direct(&mut self, direct: &BTreeSet<IpNet>) -> Result<usize, DatapathError> {
        let held = self.direct.write(direct)?;
        let Some(change) = held.and_then(|held| DirectChange::between(&held, direct)) else {
            return Ok(0);
        };
        let moved = self.v4.settle_direct(&change)? + self.v6.settle_direct(&change)?;
        if moved > 0 {
            info!("{moved} flows classified afresh: the main table's specific routes changed");
        }
        Ok(moved)
    }

    /// The policy rules new flows are matched against (unchanged ones are not
    /// rewritten).
    pub fn write_policy(&mut self, policy: &crate::plan::Policy) -> Result<(), DatapathError> {
        self.rules.write(policy)
    }

    /// How new flows are grouped (`[balance] by`); read only for new flows, so a
    /// change moves no running flow.
    pub fn write_balance(&mut self, by: u32) -> Result<(), DatapathError> {
        self.balance
            .set(0, &by, 0)
            .map_err(map_error(map_names::BALANCE))
    }

    /// The uplink table and the slot owners. Unused slots are cleared so a removed
    /// uplink's flows are re-steered.
    pub fn write_uplinks(&mut self, plan: &Plan) -> Result<(), DatapathError> {
        self.write_balance(plan.balance_by)?;
        for index in 0..MAX_UPLINKS {
            self.set_uplink(index, planned_uplink(plan, index))?;
            let owner = plan
                .uplinks
                .iter()
                .find(|u| u.slot == index)
                .map(|u| slot_name(&u.name))
                .unwrap_or_default();
            self.slots
                .set(index, &owner, 0)
                .map_err(map_error(map_names::SLOTS))?;
        }
        Ok(())
    }

    /// Writes the IPv4 ring (see [`Ring::write`]).
    pub fn write_ring(&mut self, ring: &[u32]) -> Result<(), DatapathError> {
        self.ring.write(ring)
    }

    /// Writes the IPv6 ring.
    pub fn write_ring6(&mut self, ring: &[u32]) -> Result<(), DatapathError> {
        self.ring6.write(ring)
    }

    /// Every ring slot of both families points at no uplink yet: new flows are
    /// remembered as pending and pass unmarked (see [`PENDING_UPLINK`]) until the
    /// real rings are written.
    pub fn write_pending_rings(&mut self) -> Result<(), DatapathError> {
        let pending = vec![PENDING_UPLINK; RING_SIZE as usize];
        self.write_ring(&pending)?;
        self.write_ring6(&pending)
    }

    /// Where the kernel's uplink table and ring differ from the plan, in words;
    /// empty when they match. Reads the maps themselves, not what we believe we
    /// wrote.
    pub fn differences(&mut self, plan: &Plan) -> Result<Vec<String>, DatapathError> {
        let mut differences = Vec::new();
        let by = self.balance_by()?;
        if by != plan.balance_by {
            differences.push(format!("balance mode {by} instead of {}", plan.balance_by));
        }
        for index in 0..MAX_UPLINKS {
            let held = self
                .uplinks
                .get(&index, 0)
                .map_err(map_error(map_names::UPLINKS))?;
            if held != planned_uplink(plan, index) {
                differences.push(format!("uplink slot {index} holds {held:?}"));
            }
        }
        for (ring, planned, family) in [
            (&mut self.ring, &plan.ring, "IPv4"),
            (&mut self.ring6, &plan.ring6, "IPv6"),
        ] {
            let wrong = ring.differing_slots(planned)?;
            if wrong > 0 {
                differences.push(format!("{wrong} {family} ring slots differ from the plan"));
            }
        }
        differences.extend(self.rules.differences(&plan.policy)?);
        differences.extend(self.direct.differences(&plan.direct)?);
        Ok(differences)
    }

    pub fn set_uplink(&mut self, index: u32, uplink: Uplink) -> Result<(), DatapathError> {
        self.uplinks
            .set(index, &uplink, 0)
            .map_err(map_error(map_names::UPLINKS))
    }

    /// `[balance] by`, as the datapath reads it.
    pub fn balance_by(&self) -> Result<u32, DatapathError> {
        self.balance
            .get(&0, 0)
            .map_err(map_error(map_names::BALANCE))
    }

    /// How many tracked flows each uplink slot holds, in one walk of the table.
    pub fn flows_per_uplink(&self) -> std::collections::BTreeMap<u32, usize> {
        let mut counts = std::collections::BTreeMap::new();
        self.v4.count_per_uplink(&mut counts);
        self.v6.count_per_uplink(&mut counts);
        counts
    }

    /// Packets and bytes steered to uplink `index`, summed over CPUs.
    pub fn traffic(&self, index: u32) -> Result<Traffic, DatapathError> {
        let per_cpu: PerCpuValues<Traffic> = self
            .traffic
            .get(&index, 0)
            .map_err(map_error(map_names::TRAFFIC))?;
        Ok(per_cpu.iter().fold(Traffic::default(), |sum, t| Traffic {
            packets: sum.packets + t.packets,
            bytes: sum.bytes + t.bytes,
        }))
    }

    /// Every outcome counter of `family` (`multiroute_ebpf::family`), summed over
    /// CPUs.
    pub fn counters(&self, family: u32) -> Result<Vec<(Counter, u64)>, DatapathError> {
        (family * COUNTER_COUNT..)
            .zip(Counter::ALL)
            .map(|(index, counter)| {
                let per_cpu = self
                    .counters
                    .get(&index, 0)
                    .map_err(map_error(map_names::COUNTERS))?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect()
    }
}
