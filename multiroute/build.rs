//! Builds the eBPF classifier (`multiroute-ebpf`'s `[[bin]]`) so the loader can embed it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// The nightly whose LLVM matches the LLVM bpf-linker links against (Debian's
/// llvm-22); newer nightlies emit bitcode bpf-linker rejects ("Invalid record").
/// `cargo xtask` installs exactly this toolchain.
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-20";

fn main() -> anyhow::Result<()> {
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
