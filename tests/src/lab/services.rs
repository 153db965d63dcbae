//! What runs in the lab besides multiroute: servers, DNS, DHCP and RA daemons,
//! started for the life of the lab or as named services a test stops.
use super::*;

impl Lab {
    pub(crate) fn wait_for_server(&self) -> Result<()> {
        self.wait_for_http(&self.isp(0), &self.url("/"))
    }

    /// Waits until `url` answers from namespace `ns`.
    pub(crate) fn wait_for_http(&self, ns: &str, url: &str) -> Result<()> {
        wait_until(Duration::from_secs(10), || {
            self.ns(
                ns,
                "python3",
                &[&lab_script("client.py"), "count", url, "1", "2"],
            )
            .map(|out| stdout(&out).contains("\"failures\": 0"))
            .unwrap_or(false)
        })
        .with_context(|| format!("{url} did not come up"))
    }

    /// Starts `program` in namespace `ns` for the life of the lab.
    pub fn start_in(&mut self, ns: &str, program: &str, args: &[&str]) -> Result<()> {
        let child = self.spawn_ns(ns, program, args)?;
        self.children.push(child);
        Ok(())
    }

    /// Starts `program` in namespace `ns` as service `name` (stopped with the lab,
    /// or by [`Lab::stop_service`]).
    pub fn start_service(
        &mut self,
        name: &str,
        ns: &str,
        program: &str,
        args: &[&str],
    ) -> Result<()> {
        ensure!(
            !self.services.contains_key(name),
            "{name} is already running"
        );
        let child = self.spawn_ns(ns, program, args)?;
        self.services.insert(name.to_owned(), child);
        Ok(())
    }

    /// Sends `signal` to service `name`.
    pub fn signal_service(&self, name: &str, signal: i32) -> Result<()> {
        let child = self
            .services
            .get(name)
            .with_context(|| format!("no service {name}"))?;
        signal_child(child, signal, name)
    }

    /// Stops service `name` with `signal` and waits (bounded) for it to exit.
    pub fn stop_service(&mut self, name: &str, signal: i32) -> Result<()> {
        self.signal_service(name, signal)?;
        let mut child = self.services.remove(name).context("no such service")?;
        wait_exit(&mut child, Duration::from_secs(5), name).map(drop)
    }

    /// Starts dnsmasq in namespace `ns` (stopped with the lab), answering on
    /// `listen` with `rules` (e.g. `--address=/name/192.0.2.1`) and logging every
    /// query to `<lab dir>/<log>`.
    pub fn start_dnsmasq(
        &mut self,
        ns: &str,
        log: &str,
        listen: &str,
        rules: &[String],
    ) -> Result<()> {
        let dir = self.dir.clone();
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            "--user=root".into(),
            "--cache-size=0".into(),
            "--log-queries".into(),
            format!("--listen-address={listen}"),
            format!("--log-facility={}", dir.join(log).display()),
            format!("--pid-file={}", dir.join(format!("{log}.pid")).display()),
        ];
        args.extend(rules.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_in(ns, "dnsmasq", &args)
    }

    /// Starts the lab's HTTP server in namespace `ns` on `address:port` (stopped with
    /// the lab) and waits until `ns` itself reaches it.
    pub fn start_http_server(&mut self, ns: &str, address: &str, port: u16) -> Result<()> {
        let server = self.spawn_ns(
            ns,
            "python3",
            &[&lab_script("server.py"), address, &port.to_string()],
        )?;
        self.children.push(server);
        let probe = match address {
            "0.0.0.0" => "127.0.0.1".to_owned(),
            "::" => "[::1]".to_owned(),
            ipv6 if ipv6.contains(':') => format!("[{ipv6}]"),
            ipv4 => ipv4.to_owned(),
        };
        self.wait_for_http(ns, &format!("http://{probe}:{port}/"))
    }

    /// Runs the lab client's `count` mode against `url` from namespace `ns`, from
    /// `source` if given: (answers by the address the server saw, failures).
    pub fn count_from(
        &self,
        ns: &str,
        url: &str,
        count: usize,
        source: Option<&str>,
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let count = count.to_string();
        let script = lab_script("client.py");
        let mut args = vec![script.as_str(), "count", url, &count, "120"];
        args.extend(source);
        let out = self.ns(ns, "python3", &args)?;
        traffic::tally(&out.stdout, "seen")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{SERVER}:{SERVER_PORT}{path}")
    }
}
