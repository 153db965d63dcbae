//! A fresh Debian 12 booted by systemd-nspawn inside the lab's router namespace:
//! a real systemd as PID 1, real apt and dpkg, so the package is installed,
//! started, upgraded and removed exactly as on a user's router. The root comes
//! from debootstrap once per package list (cached under target/) and is unpacked
//! anew per test.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{Lab, run, stdout, wait_until};

/// What the root holds besides minbase and the packages a test asks for: systemd
/// to boot, and man to read pages.
const INCLUDE: &[&str] = &["systemd", "systemd-sysv", "dbus", "man-db"];
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";

/// A booted container; stopped (and its processes gone) on drop.
pub struct Container {
    nspawn: Child,
    /// The container's PID 1 (its systemd), whose namespaces commands enter.
    leader: i32,
    pub root: PathBuf,
}

impl Container {
    /// Boots a fresh root with `packages` installed in `lab`'s router namespace;
    /// returns once systemd says the boot finished.
    pub fn boot(lab: &Lab, packages: &[String]) -> Result<Self> {
        let root = lab.dir.join("debian");
        let mut include: Vec<String> = INCLUDE.iter().map(|p| p.to_string()).collect();
        include.extend(packages.iter().cloned());
        include.sort();
        include.dedup();
        unpack_root(&root, &include.join(","))?;
        let log = std::fs::File::create(lab.dir.join("container.log"))
            .context("creating the container log")?;
        let nspawn = Command::new("systemd-nspawn")
            // The daemon writes /proc/sys/net and mounts a bpffs under /sys.
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
            .args(["--quiet", "--boot", "--register=no", "--keep-unit"])
            .args(["--capability=all", "--console=passive"])
            // nspawn filters bpf(2) out by default; a router runs its datapath.
            .arg("--system-call-filter=bpf")
            .arg(format!("--machine={}", lab.router()))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                lab.router()
            ))
            .arg("--directory")
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut container = Container {
            leader: 0,
            nspawn,
            root,
        };
        let start = Instant::now();
        container.leader = loop {
            if let Some(pid) = systemd_child(container.nspawn.id()) {
                break pid;
            }
            if start.elapsed() > Duration::from_secs(20) || container.nspawn.try_wait()?.is_some() {
                bail!(
                    "the container did not start:\n{}",
                    std::fs::read_to_string(lab.dir.join("container.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        wait_until(Duration::from_secs(60), || {
            container
                .sh("systemctl is-system-running --wait")
                .is_ok_and(|out| matches!(stdout(&out).trim(), "running" | "degraded"))
        })
        .context("the container's systemd did not finish booting")?;
        Ok(container)
    }

    /// Runs `script` with `sh -c` inside the container (its mounts, PIDs and
    /// systemd), with a plain root environment.
    pub fn sh(&self, script: &str) -> Result<Output> {
        Command::new("nsenter")
            .arg(format!("--target={}", self.leader))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup"])
            .args(["--wdns=/", "--", "env", "-i"])
            .args([
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C.UTF-8",
            ])
            .args([
                "TERM=dumb",
                "DEBIAN_FRONTEND=noninteractive",
                "sh",
                "-c",
                script,
            ])
            .output()
            .with_context(|| format!("running {script:?} in the container"))
    }

    /// [`Container::sh`] that must succeed; its standard output.
    pub fn ok(&self, script: &str) -> Result<String> {
        let out = self.sh(script)?;
        ensure!(
            out.status.success(),
            "{script:?} failed ({}):\n{}{}",
            out.status,
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout(&out))
    }

    /// Copies `file` into the container's /root; returns its path inside.
    pub fn copy_in(&self, file: &Path) -> Result<String> {
        let name = file.file_name().context("a file name")?.to_string_lossy();
        std::fs::copy(file, self.root.join("root").join(name.as_ref()))
            .with_context(|| format!("copying {} into the container", file.display()))?;
        Ok(format!("/root/{name}"))
    }

    /// A path inside the running container, as the host reaches it (through its
    /// PID 1's root, so its own mounts, such as its bpffs, are seen).
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.leader))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn to shut the container down cleanly.
        // SAFETY: kill(2) on the nspawn process this struct started.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.nspawn.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(15) {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The systemd that nspawn started as the container's PID 1.
fn systemd_child(nspawn: u32) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|pid| pid.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "systemd")
        })
}

/// A fresh copy of the cached root at `root`, debootstrapped first if there is
/// no cache yet.
fn unpack_root(root: &Path, include: &str) -> Result<()> {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debian-root")
        .join(format!("{SUITE}-{}.tar", include.replace(',', "+")));
    if !cache.exists() {
        debootstrap(&cache, include)?;
    }
    std::fs::create_dir_all(root).context("creating the container root")?;
    let out = run(
        "tar",
        &[
            "-xpf",
            &cache.to_string_lossy(),
            "-C",
            &root.to_string_lossy(),
        ],
    )?;
    ensure!(out.status.success(), "unpacking {}", cache.display());
    Ok(())
}

fn debootstrap(cache: &Path, include: &str) -> Result<()> {
    let dir = cache.with_extension("building");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).context("creating the debootstrap directory")?;
    println!("debootstrapping a Debian {SUITE} root for the package tests (once, about a minute)");
    let out = run(
        "debootstrap",
        &[
            "--variant=minbase",
            &format!("--include={include}"),
            SUITE,
            &dir.to_string_lossy(),
            MIRROR,
        ],
    )?;
    ensure!(
        out.status.success(),
        "debootstrap failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let partial = cache.with_extension("partial");
    let out = run(
        "tar",
        &[
            "-cpf",
            &partial.to_string_lossy(),
            "-C",
            &dir.to_string_lossy(),
            ".",
        ],
    )?;
    ensure!(out.status.success(), "packing the debootstrapped root");
    std::fs::rename(&partial, cache).context("caching the root")?;
    std::fs::remove_dir_all(&dir).context("removing the debootstrap directory")
}
