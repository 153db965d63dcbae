//! Builds the eBPF classifier (`multiroute-ebpf`'s `[[bin]]`) so the loader can embed it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The nightly whose LLVM matches the LLVM bpf-linker links against (Debian's
/// llvm-22); newer nightlies emit bitcode bpf-linker rejects ("Invalid record").
/// `cargo xtask` installs exactly this toolchain.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-20";

/// The commit being built, for `multiroute --version`: from git when the source is
/// a checkout, else `MULTIROUTE_COMMIT` (a packaging build from a tarball), else
/// "unknown".
fn record_commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .or_else(|| std::env::var("MULTIROUTE_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MULTIROUTE_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=MULTIROUTE_COMMIT");
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // HEAD names the branch; the branch's ref (loose or packed) moves with commits.
        for file in ["HEAD", "packed-refs"] {
            println!("cargo:rerun-if-changed={git_dir}/{file}");
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{branch}");
        }
    }
}

fn main() -> anyhow::Result<()> {
    record_commit();
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("reading the workspace metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|package| package.name.as_str() == "multiroute-ebpf")
        .ok_or_else(|| anyhow!("the multiroute-ebpf package is missing from the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent directory", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
