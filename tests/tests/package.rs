//! The Debian package as a user meets it: `cargo xtask dist` builds it (`cargo
//! xtask test` does so first, with the tests' own build), lintian judges it, and it
//! is installed with apt into a fresh Debian 12 booted by systemd-nspawn inside the
//! lab's router, which is wired as routers are: one uplink with a static default,
//! one configured by a DHCP client, one point-to-point. `multiroute init` writes the
//! config, systemd runs the service, an upgrade restarts it under live sessions,
//! and remove and purge leave nothing. The arm64 package runs under qemu-user.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    thread::sleep,
    time::Duration,
};

use multiroute_tests::{
    Lab, LabOptions, classifiers_using, container::Container, isp::DhcpClient, require_root,
    require_tool, stdout, wait_until,
};

/// The package `cargo xtask dist` built for `arch`.
fn package(arch: &str) -> PathBuf {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist");
    let version = env!("CARGO_PKG_VERSION");
    let deb = dist.join(format!("multiroute_{version}-1_{arch}.deb"));
    assert!(
        deb.exists(),
        "{} is missing: `cargo xtask test` builds it (by hand: cargo xtask dist --profile dev{})",
        deb.display(),
        if arch == "arm64" {
            " --target aarch64-unknown-linux-gnu"
        } else {
            ""
        }
    );
    deb
}

/// The packages `deb` depends on, by name.
fn depends(deb: &Path) -> Vec<String> {
    let out = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb)
        .arg("Depends")
        .output()
        .unwrap();
    stdout(&out)
        .split(',')
        .filter_map(|item| item.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// `deb` again as version `version`: the same files, a newer package to upgrade to.
fn repackaged(deb: &Path, version: &str, dir: &Path) -> PathBuf {
    let tree = dir.join("repack");
    let run = |args: &[&str]| {
        let status = Command::new("dpkg-deb")
            .args(args)
            .status()
            .expect("running dpkg-deb");
        assert!(status.success(), "dpkg-deb {args:?}");
    };
    run(&["-R", &deb.to_string_lossy(), &tree.to_string_lossy()]);
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let text: String = text
        .lines()
        .map(|line| match line.starts_with("Version: ") {
            true => format!("Version: {version}\n"),
            false => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&control, text).unwrap();
    let newer = dir.join(format!("multiroute_{version}_amd64.deb"));
    run(&[
        "--root-owner-group",
        "-b",
        &tree.to_string_lossy(),
        &newer.to_string_lossy(),
    ]);
    newer
}

#[test]
fn lintian_finds_no_error_in_either_package() {
    if !require_tool!("lintian") {
        return;
    }
    for arch in ["amd64", "arm64"] {
        let out = Command::new("lintian")
            .args(["--fail-on", "error", "--no-tag-display-limit"])
            .arg(package(arch))
            .output()
            .expect("running lintian");
        println!("lintian {arch}:\n{}", stdout(&out));
        assert!(out.status.success(), "lintian {arch}: {}", stdout(&out));
    }
}

#[test]
fn the_package_installs_upgrades_and_removes_cleanly_on_a_router() {
    if !require_root!() || !require_tool!("debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb") {
        return;
    }
    let deb = package("amd64");
    let mut lab = Lab::new(&LabOptions {
        weights: vec![1, 1, 1],
        extra_config: String::new(),
    })
    .expect("building the lab");
    // A router as users have them: wan0 static (the lab's default), wan1 by
    // DHCP, wan2 point-to-point.
    lab.serve_dhcp(1, (100, 150), 1).unwrap();
    lab.start_dhcp_client(1, DhcpClient::Dhcpcd).unwrap();
    lab.make_point_to_point(2).unwrap();
    let pristine = lab.router_snapshot().unwrap();
    // The root holds exactly what the package depends on: a missing dependency
    // (a program the unit or the daemon runs) fails below.
    let container = Container::boot(&lab, &depends(&deb)).expect("booting Debian in the router");

    // Installed, neither enabled nor started: the routing is untouched.
    let inside = container.copy_in(&deb).unwrap();
    container
        .ok(&format!("apt-get install -y -q {inside}"))
        .expect("apt install");
    assert_eq!(
        container
            .sh("systemctl is-enabled multiroute")
            .unwrap()
            .stdout,
        b"disabled\n"
    );
    assert_eq!(
        container
            .sh("systemctl is-active multiroute")
            .unwrap()
            .stdout,
        b"inactive\n"
    );
    assert_eq!(
        lab.router_snapshot().unwrap(),
        pristine,
        "apt install changed the routing"
    );
    let version = container.ok("multiroute --version").unwrap();
    assert!(
        version.starts_with(&format!(
            "multiroute {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{version}"
    );
    let page = container
        .ok("man -P cat multiroute-load 2>/dev/null")
        .unwrap();
    assert!(
        page.contains("multiroute-load") && page.contains("--config"),
        "{page}"
    );
    let config_page = container
        .ok("man -P cat 5 multiroute.toml 2>/dev/null")
        .unwrap();
    assert!(config_page.contains("interval_ms = 500"), "{config_page}");
    container
        .ok("systemd-analyze verify multiroute.service")
        .expect("the unit passes systemd-analyze verify");

    // A first config from the host, loaded unchanged by the service.
    let proposed = container
        .ok("multiroute init --write /etc/multiroute/multiroute.toml")
        .expect("init writes a config that check passes");
    println!("{proposed}");
    let config =
        std::fs::read_to_string(container.root.join("etc/multiroute/multiroute.toml")).unwrap();
    println!("{config}");
    assert!(config.contains("lan = [\"lan0\"]"), "{config}");
    for n in 0..3 {
        assert!(
            config.contains(&format!("interface = \"wan{n}\"")),
            "{config}"
        );
    }
    assert!(config.contains("from DHCP"), "{config}");
    assert!(config.contains("Point-to-point"), "{config}");
    let refused = container
        .sh("multiroute init --write /etc/multiroute/multiroute.toml")
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "init never overwrites");
    let journal = || {
        container
            .ok("journalctl -u multiroute --no-pager")
            .unwrap_or_default()
    };
    if let Err(err) = container.ok("systemctl start multiroute") {
        panic!("the service did not start: {err}\n{}", journal());
    }
    let ready = || {
        container
            .sh("multiroute status --json")
            .ok()
            .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .is_some_and(|status| status["ready"] == true)
    };
    wait_until(Duration::from_secs(20), ready).expect("the service is ready");
    let completed = container
        .ok("bash -c '. /usr/share/bash-completion/completions/multiroute; COMP_WORDS=(multiroute weight w); COMP_CWORD=2; _clap_complete_multiroute multiroute w weight; echo ${COMPREPLY[*]}'")
        .unwrap();
    assert_eq!(
        completed.trim(),
        "wan0 wan1 wan2",
        "uplink names complete from the config"
    );
    let spread = lab.connections(300).unwrap();
    assert_eq!(spread.failures, 0);
    assert!(
        spread.hits.iter().all(|&hits| hits > 30),
        "all three carry: {:?}",
        spread.hits
    );

    // An upgrade under live sessions: the package restarts the service, and the
    // new daemon adopts the datapath.
    let newer = repackaged(&deb, &format!("{}-2", env!("CARGO_PKG_VERSION")), &lab.dir);
    let newer = container.copy_in(&newer).unwrap();
    let pid = container
        .ok("systemctl show -P MainPID multiroute")
        .unwrap();
    let sessions = lab.start_sessions(100, 20, 6.0, 100).unwrap();
    sleep(Duration::from_secs(1));
    container
        .ok(&format!("apt-get install -y -q {newer}"))
        .expect("apt upgrade");
    wait_until(Duration::from_secs(20), ready).expect("ready after the upgrade");
    let report = sessions.finish().unwrap();
    assert_ne!(
        container
            .ok("systemctl show -P MainPID multiroute")
            .unwrap(),
        pid,
        "restarted"
    );
    let broken: Vec<_> = report
        .all()
        .filter(|s| s.error.is_some() || s.addresses.len() > 1)
        .take(5)
        .collect();
    assert_eq!(
        (report.moved(), report.broken()),
        (0, 0),
        "the upgrade moved or broke sessions: {broken:?}\n{}",
        journal()
    );
    let log = journal();
    assert!(log.contains("adopted the running datapath"), "{log}");

    // Remove: the service stopped and everything it set up gone.
    let flow_table = container
        .path("/sys/fs/bpf/multiroute")
        .join(multiroute_ebpf::map_names::FLOWS);
    let map = aya::maps::MapData::from_pin(&flow_table).expect("the pinned flow table");
    let tables = BTreeSet::from([map.info().expect("its info").id()]);
    assert_eq!(classifiers_using(&tables), 1);
    container
        .ok("apt-get remove -y -q multiroute")
        .expect("apt remove");
    assert_eq!(
        lab.router_snapshot().unwrap(),
        pristine,
        "apt remove left routing behind"
    );
    assert_eq!(
        classifiers_using(&tables),
        0,
        "apt remove left the classifier loaded"
    );
    assert!(!container.path("/sys/fs/bpf/multiroute").exists());
    assert!(
        container
            .root
            .join("etc/multiroute/multiroute.toml")
            .exists(),
        "remove keeps the config"
    );
    container
        .ok("apt-get purge -y -q multiroute")
        .expect("apt purge");
    for gone in [
        "etc/multiroute",
        "var/lib/multiroute",
        "usr/sbin/multiroute",
        "lib/systemd/system/multiroute.service",
    ] {
        assert!(
            !container.root.join(gone).exists(),
            "{gone} is left after purge"
        );
    }
    let listed = container.sh("dpkg -s multiroute").unwrap();
    assert!(!listed.status.success(), "dpkg still knows multiroute");
}

#[test]
fn the_arm64_package_runs_under_qemu() {
    if !require_root!() || !require_tool!("qemu-aarch64-static") {
        return;
    }
    let deb = package("arm64");
    let info = Command::new("dpkg")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        stdout(&info).contains("Architecture: arm64"),
        "{}",
        stdout(&info)
    );
    let lab = Lab::new(&LabOptions {
        weights: vec![1, 2],
        extra_config: String::new(),
    })
    .expect("building the lab");
    let tree = lab.dir.join("arm64");
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success());
    let binary = tree.join("usr/sbin/multiroute");
    let file = Command::new("file").arg(&binary).output();
    if let Ok(file) = file {
        assert!(stdout(&file).contains("ARM aarch64"), "{}", stdout(&file));
    }
    let router = lab.router();
    let qemu = |args: &[&str]| {
        let mut full = vec![
            "netns",
            "exec",
            &router,
            "qemu-aarch64-static",
            "-L",
            "/usr/aarch64-linux-gnu",
        ];
        let binary = binary.to_string_lossy();
        full.push(&binary);
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .output()
            .expect("running qemu")
    };
    let version = qemu(&["--version"]);
    assert_eq!(
        stdout(&version),
        stdout(
            &Command::new(multiroute_tests::multiroute_bin())
                .arg("--version")
                .output()
                .unwrap()
        ),
        "the same version, commit and map layout as this build"
    );
    // A config error: exit 2 and the same one line as on amd64.
    let broken = lab.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "lan = [\"lan0\"]\n[[uplink]]\nname = \"x\"\ninterface = \"wan0\"\nweight = 999\n",
    )
    .unwrap();
    let broken = broken.to_string_lossy().into_owned();
    let refused = qemu(&["-c", &broken, "check"]);
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr),
        format!("multiroute: {broken}: uplink[0].weight: 999 must be between 0 and 256\n")
    );
    // The lab's config: the same report as the amd64 binary gives, as far as
    // qemu-user goes: its netlink translation has no RTM_GETRULE, so listing the
    // host's rules stops it there.
    let config = lab.config.to_string_lossy().into_owned();
    let arm = qemu(&["-c", &config, "check", "--plan"]);
    let native = lab.multiroute(&["check", "--plan"]);
    assert!(native.status.success(), "{}", stdout(&native));
    let (arm_report, native_report) = (stdout(&arm), stdout(&native));
    println!(
        "arm64 under qemu:\n{arm_report}{}",
        String::from_utf8_lossy(&arm.stderr)
    );
    assert!(
        arm_report.contains("ok: kernel") && arm_report.contains("is on a bpffs"),
        "{arm_report}"
    );
    if arm.status.success() {
        assert_eq!(arm_report, native_report);
    } else {
        assert!(
            native_report.starts_with(&arm_report),
            "{arm_report}\nvs\n{native_report}"
        );
        assert!(
            String::from_utf8_lossy(&arm.stderr).contains("listing rules"),
            "only qemu's missing rule dumps stop it: {}",
            String::from_utf8_lossy(&arm.stderr)
        );
    }
}
