//! The lab's namespaces and links: the client, the router (or the pair), the ISPs
//! and the internet with its server, wired by veths and addressed.
use super::*;

impl Lab {
    /// Builds the topology with `options.weights.len()` ISPs and writes the config;
    /// the router is not started.
    pub fn new(options: &LabOptions) -> Result<Lab> {
        Self::create(options, false)
    }

    pub(crate) fn create(options: &LabOptions, pair: bool) -> Result<Lab> {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cleanup::remove_stale();
        Self::assemble(options, pair, Some(serial))
    }

    /// `n` labs side by side, alike but for their namespaces: the bench's (a
    /// plain router measured where multiroute ran would pay for its rules).
    /// Only the last holds the process's turn, so it goes last.
    pub fn side_by_side(options: &LabOptions, n: usize) -> Result<Vec<Lab>> {
        let holder = Self::create(options, false)?;
        let mut labs = (1..n)
            .map(|_| Self::assemble(options, false, None))
            .collect::<Result<Vec<_>>>()?;
        labs.push(holder);
        Ok(labs)
    }

    fn assemble(
        options: &LabOptions,
        pair: bool,
        serial: Option<MutexGuard<'static, ()>>,
    ) -> Result<Lab> {
        let prefix = format!(
            "mrt{}x{}",
            std::process::id() % 100_000,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = PathBuf::from("/run").join(&prefix);
        let mut lab = Lab {
            config: dir.join("multiroute.toml"),
            prefix,
            dir,
            isps: options.weights.len(),
            children: Vec::new(),
            services: BTreeMap::new(),
            flow_tables: Mutex::default(),
            router: None,
            pair,
            router_b: None,
            _serial: serial,
        };
        lab.build(options)?;
        Ok(lab)
    }

    pub(crate) fn build(&mut self, options: &LabOptions) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("bpf")).context("creating the lab directory")?;
        cleanup::claim(&self.dir).context("recording the lab's owner")?;
        // A bpffs in the host's mount namespace: `ip netns exec` remounts /sys, and a
        // mount made inside one `ip netns exec` dies with that process.
        run(
            "mount",
            &["-t", "bpf", "bpf", &self.dir.join("bpf").to_string_lossy()],
        )?;
        let (client, inet) = (self.client(), self.inet());
        for ns in self.namespaces() {
            run("ip", &["netns", "add", &ns])?;
        }
        if self.pair {
            self.wire_pair()?;
        } else {
            self.wire_router()?;
        }
        self.addr(&client, "eth0", "100.64.0.2/24")?;
        self.ns(
            &client,
            "ip",
            &["route", "add", "default", "via", "100.64.0.1"],
        )?;
        for server in [SERVER, SERVER2] {
            self.ns(
                &inet,
                "ip",
                &["addr", "add", &format!("{server}/32"), "dev", "lo"],
            )?;
        }
        for n in 0..self.isps {
            let isp = self.isp(n);
            let inet_if = format!("inet{n}");
            self.addr(&isp, "cpe", &format!("198.18.{n}.1/24"))?;
            self.veth(&isp, "inet", &inet, &inet_if)?;
            self.addr(&isp, "inet", &format!("198.19.{n}.1/24"))?;
            self.addr(&inet, &inet_if, &format!("198.19.{n}.2/24"))?;
            self.ns(
                &isp,
                "ip",
                &[
                    "route",
                    "add",
                    "203.0.113.0/24",
                    "via",
                    &format!("198.19.{n}.2"),
                ],
            )?;
            self.ns(
                &inet,
                "ip",
                &[
                    "route",
                    "add",
                    &format!("198.18.{n}.0/24"),
                    "via",
                    &format!("198.19.{n}.1"),
                ],
            )?;
            self.ns(&isp, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        if self.pair {
            self.pair_nat()?;
        } else {
            self.ns(&self.router(), "nft", &[LAB_NAT])?;
        }
        for router in self.routers() {
            self.ns(&router, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        }
        self.write_config(options)?;
        let server = self.spawn_ns(
            &inet,
            "python3",
            &[
                &lab_script("server.py"),
                "0.0.0.0",
                &SERVER_PORT.to_string(),
                &SERVER.to_string(),
            ],
        )?;
        self.children.push(server);
        self.wait_for_server()
    }

    /// The single router: a veth to the client and one to each ISP, its addresses,
    /// and its own default before multiroute (via the first ISP, as a box with one
    /// working uplink would have it).
    pub(crate) fn wire_router(&self) -> Result<()> {
        let router = self.router();
        self.veth(&self.client(), "eth0", &router, "lan0")?;
        self.addr(&router, "lan0", "100.64.0.1/24")?;
        for n in 0..self.isps {
            let wan = format!("wan{n}");
            self.veth(&router, &wan, &self.isp(n), "cpe")?;
            self.addr(&router, &wan, &format!("{}/24", Self::uplink_address(n)))?;
        }
        self.ns(
            &router,
            "ip",
            &[
                "route",
                "add",
                "default",
                "via",
                "198.18.0.1",
                "dev",
                "wan0",
            ],
        )
        .map(drop)
    }

    /// Every namespace of the lab.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        let mut namespaces = vec![self.client(), self.inet()];
        namespaces.extend(self.routers());
        namespaces.extend((0..self.isps).map(|n| self.isp(n)));
        if self.pair {
            namespaces.push(self.switch());
        }
        namespaces
    }

    /// The router namespaces: one, or the pair.
    pub(crate) fn routers(&self) -> Vec<String> {
        let mut routers = vec![self.router()];
        if self.pair {
            routers.push(self.router_b());
        }
        routers
    }

    pub(crate) fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
        run(
            "ip",
            &[
                "link", "add", a, "netns", ns_a, "type", "veth", "peer", "name", b, "netns", ns_b,
            ],
        )?;
        self.ns(ns_a, "ip", &["link", "set", a, "up"])?;
        self.ns(ns_b, "ip", &["link", "set", b, "up"])?;
        self.ns(ns_a, "ip", &["link", "set", "lo", "up"])?;
        self.ns(ns_b, "ip", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    pub(crate) fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        self.ns(ns, "ip", &["addr", "add", cidr, "dev", dev])
            .map(drop)
    }

    /// Runs a command inside namespace `ns` to completion.
    pub fn ns(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub(crate) fn spawn_ns(&self, ns: &str, program: &str, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {ns}"))
    }
}
