//! Installs what building and testing multiroute needs on a fresh Debian 12 machine,
//! skipping what is already there. The versions are the ones NOTES.md verified: the
//! eBPF nightly's LLVM must match the LLVM bpf-linker links against (Debian's 22).
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Result, bail};

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
    // what ISPs speak: router advertisements, and the DHCP clients routers run
    // (dhcpcd-base has no service to start; udhcpc brings Debian's default.script)
    "radvd",
    "dhcpcd-base",
    "udhcpc",
    // the HA pair (contrib/ha): VRRP and conntrack sync, run by the tests only
    "keepalived",
    "conntrackd",
    // benchmarks and the fast path's tests; the bench's mwan3 model
    "iperf3",
    "iptables",
    "ipset",
    // `systemd-analyze verify` checks the shipped unit
    "systemd",
    // the status page is tested in a real browser
    "chromium",
    // the package: built, checked by lintian, installed into a fresh Debian 12
    // root booted by systemd-nspawn; the ARM build, and qemu to run it
    "lintian",
    "debootstrap",
    "systemd-container",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
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

/// The Rust standard library for `triple` (Debian's cross toolchain comes with
/// the apt packages).
pub fn ensure_cross(triple: &str) -> Result<()> {
    let installed = quiet("rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if installed.lines().any(|line| line.trim() == triple) {
        return Ok(());
    }
    step(
        &format!("adding the Rust target {triple}"),
        Command::new("rustup").args(["target", "add", triple]),
    )
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
    step(
        "updating the Debian package lists",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    // keepalived, conntrackd and radvd must not start as host services: the tests run
    // them inside their namespaces. policy-rc.d answering 101 ("action not
    // allowed") keeps the packages' scripts from starting anything.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists()
        && std::fs::write(
            policy,
            "#!/bin/sh\n# placed by cargo xtask while installing packages\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))
        })
        .is_ok();
    let installed = step(
        &format!("installing Debian packages: {}", missing.join(" ")),
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing),
    );
    if placed {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

/// Runs one install step as one progress line: what it does, then "ok" and how
/// long it took; its own output is shown only when it fails.
fn step(what: &str, command: &mut Command) -> Result<()> {
    print!("xtask: {what} … ");
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let output = command.stdin(Stdio::null()).output();
    let output = match output {
        Ok(output) => output,
        Err(err) => {
            println!("failed");
            bail!("{what}: cannot start {:?}: {err}", command.get_program());
        }
    };
    if output.status.success() {
        println!("ok ({:.0} s)", started.elapsed().as_secs_f64());
        return Ok(());
    }
    println!("failed");
    let log = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    for line in tail.into_iter().rev() {
        eprintln!("  {line}");
    }
    bail!("{what} failed ({})", output.status)
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
    step(
        &format!("installing the eBPF toolchain {EBPF_TOOLCHAIN} with rust-src"),
        Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
    )
}

fn ensure_bpf_linker() -> Result<()> {
    let version = quiet("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    step(
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about a minute)"
        ),
        Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]),
    )
}
