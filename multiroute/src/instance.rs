//! One `load` per config: an advisory lock file beside the control socket, holding
//! the PID of the running instance.
use crate::path_error::PathError;
use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "multiroute is already running for this config (PID {pid}); stop it first or use `multiroute unload`"
    )]
    Running { pid: u32 },
    #[error(transparent)]
    Io(#[from] PathError),
}

/// Held for the life of `load`; released (by the kernel, also on SIGKILL) when dropped.
pub struct InstanceLock {
    _file: File,
}

pub fn lock_path(socket: &Path) -> PathBuf {
    beside_socket(socket, ".pid")
}

/// `<socket><suffix>` in the socket's directory: where an instance keeps its state
/// files (the lock, the sysctls `load` changed).
pub fn beside_socket(socket: &Path, suffix: &str) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    socket.with_file_name(name)
}

fn open(path: &Path) -> Result<File, PathError> {
    let io_err = |what| PathError::at(path, what);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating the runtime directory"))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("opening the lock file"))
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a valid open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn read_pid(file: &mut File) -> u32 {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    text.trim().parse().unwrap_or(0)
}

impl InstanceLock {
    pub fn acquire(socket: &Path) -> Result<Self, InstanceError> {
        let path = lock_path(socket);
        let mut file = open(&path)?;
        if !try_lock(&file) {
            return Err(InstanceError::Running {
                pid: read_pid(&mut file),
            });
        }
        let write = |file: &mut File| -> io::Result<()> {
            file.set_len(0)?;
            file.rewind()?;
            writeln!(file, "{}", std::process::id())
        };
        write(&mut file).map_err(PathError::at(&path, "writing the PID"))?;
        Ok(Self { _file: file })
    }
}

/// The PID of the running `load` for this socket, if one holds the lock.
pub fn running(socket: &Path) -> Option<u32> {
    let path = lock_path(socket);
    if !path.exists() {
        return None;
    }
    let mut file = open(&path).ok()?;
    if try_lock(&file) {
        // Nobody held it; our probe lock goes away with `file`.
        return None;
    }
    Some(read_pid(&mut file))
}

pub fn remove_lock_file(socket: &Path) {
    let _ = std::fs::remove_file(lock_path(socket));
}
