//! Installs what building and testing multiroute needs on a fresh Debian 12 machine,
//! skipping what is already there. The versions are the ones NOTES.md verified: the
//! eBPF nightly's LLVM must match the LLVM bpf-linker links against (Debian's 22).
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// Keep in sync with `EBPF_TOOLCHAIN` in multiroute/build.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: &[&str] = &[
    // bpf-linker against the system LLVM
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // the lab: namespaces, NAT, servers and clients
    "iproute2",
    "nftables",
    "python3",
    "curl",
    "iputils-ping",
    "conntrack",
    "dnsmasq-base",
    // benchmarks
    "iperf3",
    // `systemd-analyze verify` checks the shipped unit
    "systemd",
];

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

pub fn ensure() -> Result<()> {
    ensure_apt()?;
    ensure_ebpf_toolchain()?;
    ensure_bpf_linker()
}

fn quiet(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            quiet("dpkg-query", &["-W", "-f=${Status}", pkg])
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: run `apt-get install -y {}` as root",
            missing.join(" ")
        );
    }
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    )
}

fn ensure_ebpf_toolchain() -> Result<()> {
    let installed = quiet(
        "rustup",
        &[
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ],
    )
    .is_some_and(|list| list.lines().any(|line| line.starts_with("rust-src")));
    if installed {
        return Ok(());
    }
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn ensure_bpf_linker() -> Result<()> {
    let version = quiet("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    status(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
    .context("installing bpf-linker (it links against Debian's LLVM 22)")
}
