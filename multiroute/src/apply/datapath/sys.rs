//! The kernel below aya: bpffs (detected and mounted), the `BPF_MAP_*_BATCH`
//! commands aya 0.16 lacks, pinned maps opened by name, and the datapath's clock.
use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use aya::maps::{Map, MapData};
use tracing::info;

use super::error::{DatapathError, io_error, map_error};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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
pub(crate) fn update_batch(map: &MapData, keys: &[u32], values: &[u32]) -> io::Result<()> {
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
pub(crate) fn lookup_all(map: &MapData, size: u32) -> io::Result<Vec<u32>> {
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

pub(crate) fn open_map<T>(pin_path: &Path, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(pin_path.join(name)).map_err(map_error(name))?;
    let map = Map::from_map_data(data).map_err(map_error(name))?;
    T::try_from(map).map_err(map_error(name))
}
