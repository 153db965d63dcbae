//! Loading the classifier (adopting the maps a running one pinned, refusing or
//! upgrading another layout's), attaching it to the LAN interfaces through pinned
//! TCX links, and removing it all.
use std::{
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        Program, ProgramError, ProgramFd, SchedClassifier, SocketFilter, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use multiroute_ebpf::{
    AFFINITY_TABLE_SIZE, COUNTER_COUNT, ENDS_PROGRAM_NAME, FLOOR_PROGRAM_NAME, FLOW_TABLE_SIZE,
    FLOW6_TABLE_SIZE, MAP_LAYOUT, PROGRAM_NAME, REPLY_PROGRAM_NAME, UPGRADABLE_LAYOUTS, balance,
    family, map_names,
};
use tracing::{debug, info};

use super::{
    error::{DatapathError, io_error, map_error},
    sys::{open_map, prepare_pin_path},
};

/// The compiled classifier, built by build.rs through aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/multiroute"));

const LINK_PREFIX: &str = "link-";
/// Pins of the reply program's links on the uplinks.
const REPLY_LINK_PREFIX: &str = "reply-";

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
            // Many router kernels have no BTF (/sys/kernel/btf/vmlinux): the
            // programs have no CO-RE relocations and call no kfunc, so it is
            // never read, and every datapath test proves they load without it.
            .btf_source(|_| {
                Err(aya::EbpfError::BtfSourceError(std::io::Error::other(
                    "multiroute's datapath must load without kernel BTF",
                )))
            })
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
        self.tc_program(FLOOR_PROGRAM_NAME)
    }

    /// One of the object's XDP programs (the benchmark's generator and sink),
    /// verified on first use; multiroute attaches none.
    pub fn xdp_program(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        let program: &mut Xdp = program(&mut self.ebpf, name, "XDP program")?;
        if program.fd().is_err() {
            program.load().map_err(verifying(name))?;
        }
        Ok(program)
    }

    /// The filter for the fast path's conntrack destroy-event socket (see
    /// `multiroute_ebpf::ENDS_PROGRAM_NAME`), verified on first use: a
    /// descriptor of its own, for the thread that attaches it.
    pub fn ends_filter(&mut self) -> Result<ProgramFd, DatapathError> {
        let program: &mut SocketFilter =
            program(&mut self.ebpf, ENDS_PROGRAM_NAME, "socket filter")?;
        if program.fd().is_err() {
            program.load().map_err(verifying(ENDS_PROGRAM_NAME))?;
        }
        let duplicated = program.fd().and_then(|fd| Ok(fd.try_clone()?));
        duplicated.map_err(|source| DatapathError::Program {
            what: format!("duplicating the descriptor of {ENDS_PROGRAM_NAME}"),
            source: Box::new(source),
        })
    }

    /// A map of the object that is not pinned (the benchmark's), by name.
    pub fn own_map(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// The fast path's reply program, verified on first use.
    pub fn reply_program(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        self.tc_program(REPLY_PROGRAM_NAME)
    }

    /// Attaches the classifier to the ingress of every LAN interface and the
    /// fast path's reply program to that of every uplink in `uplinks`, atomically
    /// replacing the program behind a link a previous `load` pinned, and detaches
    /// from interfaces no longer listed.
    pub fn attach(
        &mut self,
        lan: &[(String, u32)],
        uplinks: &[(String, u32)],
    ) -> Result<(), DatapathError> {
        self.attach_program(PROGRAM_NAME, LINK_PREFIX, lan)?;
        self.attach_program(REPLY_PROGRAM_NAME, REPLY_LINK_PREFIX, uplinks)
    }

    fn attach_program(
        &mut self,
        name: &str,
        prefix: &str,
        interfaces: &[(String, u32)],
    ) -> Result<(), DatapathError> {
        let pin_path = self.pin_path.clone();
        for (interface, index) in interfaces {
            let link_pin = pin_path.join(format!("{prefix}{interface}"));
            if link_pin.exists() {
                match self.replace_program(name, &link_pin) {
                    Ok(()) => {
                        debug!(%interface, "replaced {name} behind the pinned link");
                        continue;
                    }
                    Err(err) => {
                        info!(%interface, "re-attaching {name}: the pinned link is unusable ({err})");
                        std::fs::remove_file(&link_pin)
                            .map_err(io_error(&link_pin, "removing a stale link pin"))?;
                    }
                }
            }
            let program = self.tc_program(name)?;
            let program_error = |what: String| {
                move |source| DatapathError::Program {
                    what,
                    source: Box::new(source),
                }
            };
            let link_id = program
                .attach(*index, TcAttachType::Ingress)
                .map_err(program_error(format!(
                    "attaching {name} to the ingress of {interface}"
                )))?;
            let link = program
                .take_link(link_id)
                .map_err(program_error(format!("taking the link on {interface}")))?;
            let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                what: format!("link on {interface} is not a TCX link"),
                source: Box::new(source),
            })?;
            link.pin(&link_pin).map_err(|source| DatapathError::Link {
                what: format!("pinning the link on {interface} at {}", link_pin.display()),
                source: Box::new(source),
            })?;
            info!(%interface, "{name} attached (TCX ingress)");
        }
        for stale in link_pins(&pin_path, prefix)? {
            let listed = interfaces
                .iter()
                .any(|(interface, _)| pin_path.join(format!("{prefix}{interface}")) == stale);
            if !listed {
                std::fs::remove_file(&stale).map_err(io_error(&stale, "detaching"))?;
            }
        }
        Ok(())
    }

    /// The classifier `name` of the object, verified on first use (the
    /// classifier proper is at load).
    pub fn tc_program(&mut self, name: &str) -> Result<&mut SchedClassifier, DatapathError> {
        let program: &mut SchedClassifier = program(&mut self.ebpf, name, "TC classifier")?;
        if program.fd().is_err() {
            program.load().map_err(verifying(name))?;
        }
        Ok(program)
    }

    fn replace_program(
        &mut self,
        name: &str,
        link_pin: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let link = FdLink::from(PinnedLink::from_pin(link_pin)?);
        let link = SchedClassifierLink::try_from(link)?;
        self.tc_program(name)?.attach_to_link(link)?;
        Ok(())
    }
}

/// The error of a program the verifier refused.
fn verifying(name: &str) -> impl FnOnce(ProgramError) -> DatapathError {
    let what = format!("verifying {name}");
    move |source| DatapathError::Program {
        what,
        source: Box::new(source),
    }
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, DatapathError> {
    program(ebpf, PROGRAM_NAME, "TC classifier")
}

/// The object's program `name`, which must be a `kind` (`T`).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str, kind: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let missing = || DatapathError::Program {
        what: format!("the object has no {kind} named {name}"),
        source: Box::new(ProgramError::NotLoaded),
    };
    let program = ebpf.program_mut(name).ok_or_else(missing)?;
    program.try_into().map_err(|source| DatapathError::Program {
        what: format!("{name} is of another program type than a {kind}"),
        source: Box::new(source),
    })
}

fn link_pins(pin_path: &Path, prefix: &str) -> Result<Vec<PathBuf>, DatapathError> {
    pin_entries(pin_path).map(|entries| {
        entries
            .into_iter()
            .filter(|path| {
                path.file_name()
                    .is_some_and(|name| name.as_bytes().starts_with(prefix.as_bytes()))
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
    let mut links = link_pins(pin_path, LINK_PREFIX)?;
    links.extend(link_pins(pin_path, REPLY_LINK_PREFIX)?);
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

/// Whether the reply program is pinned to exactly `uplinks`.
pub fn replies_attached(pin_path: &Path, uplinks: &[(String, u32)]) -> Result<bool, DatapathError> {
    let pinned = link_pins(pin_path, REPLY_LINK_PREFIX)?;
    Ok(pinned.len() == uplinks.len()
        && uplinks
            .iter()
            .all(|(name, _)| pinned.contains(&pin_path.join(format!("{REPLY_LINK_PREFIX}{name}")))))
}

/// Names of interfaces the classifier is pinned to under `pin_path`.
pub fn attached_interfaces(pin_path: &Path) -> Result<Vec<String>, DatapathError> {
    Ok(link_pins(pin_path, LINK_PREFIX)?
        .iter()
        .filter_map(|path| {
            path.file_name()?
                .to_str()?
                .strip_prefix(LINK_PREFIX)
                .map(str::to_owned)
        })
        .collect())
}
