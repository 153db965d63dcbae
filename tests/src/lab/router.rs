//! multiroute in the lab's router: its config, `load` started and stopped,
//! commands run against it.
use super::*;

impl Lab {
    pub(crate) fn write_config(&self, options: &LabOptions) -> Result<()> {
        let uplinks: Vec<_> = options.weights.iter().copied().enumerate().collect();
        self.write_uplinks(&uplinks, &options.extra_config)
    }

    /// Rewrites the config with uplinks for the given (ISP index, weight) pairs only.
    pub fn write_uplinks(&self, uplinks: &[(usize, u32)], extra_config: &str) -> Result<()> {
        let blocks: String = uplinks
            .iter()
            .map(|(n, weight)| Self::uplink_block(*n, *weight))
            .collect();
        self.write_config_with(&blocks, extra_config)
    }

    /// The `[[uplink]]` table for ISP `n`; lines appended to it belong to it.
    pub fn uplink_block(n: usize, weight: u32) -> String {
        format!(
            "\n[[uplink]]\nname = \"isp{n}\"\ninterface = \"wan{n}\"\ngateway = \"198.18.{n}.1\"\nweight = {weight}\n"
        )
    }

    /// Rewrites the config from `[[uplink]]` tables and extra sections.
    /// With a pair, router B's config is the same but for its own pins and socket.
    pub fn write_config_with(&self, uplink_blocks: &str, extra_config: &str) -> Result<()> {
        let write = |config: &Path, pin_path: &Path, socket: &str| {
            let mut text = String::from("lan = [\"lan0\"]\n");
            text += uplink_blocks;
            // State (budget counts) in the lab's own directory, never the host's.
            text += &format!(
                "\n[routing]\npin_path = \"{}\"\n\n[control]\nsocket = \"{}\"\nstate_dir = \"{}\"\n",
                pin_path.display(),
                self.dir.join(socket).display(),
                self.dir.join(format!("{socket}.state")).display()
            );
            text += extra_config;
            std::fs::write(config, text).context("writing the lab config")
        };
        write(&self.config, &self.pin_path(), "control.sock")?;
        if self.pair {
            write(&self.config_b(), &self.pin_path_b(), "control-b.sock")?;
        }
        Ok(())
    }

    /// `multiroute -c <lab config> ARGS` inside the router namespace.
    pub fn multiroute(&self, args: &[&str]) -> Output {
        multiroute_in(&self.router(), &self.config, args)
    }

    /// Starts `multiroute load` in the router and waits until it is fully set up.
    pub fn start_router(&mut self) -> Result<()> {
        self.start_router_with(&multiroute_bin())
    }

    /// [`Lab::start_router`] with another build of `multiroute` (an upgrade). Waits
    /// until `status --json` says `"ready": true`: rules, routes, the datapath and
    /// its maps all in place.
    pub fn start_router_with(&mut self, binary: &Path) -> Result<()> {
        let child = self.start_load(&self.router(), &self.config, "router.log", binary)?;
        self.router = Some(child);
        self.classifiers();
        Ok(())
    }

    /// Starts `binary load` in namespace `ns` with `config`, logging to `log` in
    /// the lab directory, and waits until its status says ready.
    pub(crate) fn start_load(
        &self,
        ns: &str,
        config: &Path,
        log: &str,
        binary: &Path,
    ) -> Result<Child> {
        let log_path = self.dir.join(log);
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .context("opening the router log")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(binary)
            .arg("-c")
            .arg(config)
            .arg("load")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting multiroute load")?;
        let start = Instant::now();
        while !status_in(ns, config).is_ok_and(|status| status["ready"] == true) {
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "multiroute load did not come up ({exited:?}):\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(child)
    }

    pub fn router_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("router.log")).unwrap_or_default()
    }

    /// PID of the running `load` (`ip netns exec` execs it, so it is the child's).
    pub fn router_pid(&self) -> Option<u32> {
        self.router.as_ref().map(Child::id)
    }

    /// Sends `signal` to the running `load` without waiting.
    pub fn signal_router(&self, signal: i32) -> Result<()> {
        let child = self.router.as_ref().context("the router is not running")?;
        signal_child(child, signal, "multiroute")
    }

    /// Sends `signal` to the running `load` and waits for it to exit.
    pub fn stop_router(&mut self, signal: i32) -> Result<std::process::ExitStatus> {
        self.signal_router(signal)?;
        self.wait_router_exit()
    }

    /// Waits (bounded) for the running `load` to exit, however it was told to.
    pub fn wait_router_exit(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.router.take().context("the router is not running")?;
        wait_exit(&mut child, Duration::from_secs(15), "multiroute")
    }

    /// Stops the running `load` with SIGTERM, which must exit 0 and leave steering
    /// in place, then removes everything with `multiroute unload`.
    pub fn stop_and_unload(&mut self) -> Result<()> {
        let status = self.stop_router(libc::SIGTERM)?;
        ensure!(
            status.code() == Some(0),
            "multiroute exited with {status}:\n{}",
            self.router_log()
        );
        let out = self.multiroute(&["unload"]);
        ensure!(
            out.status.success(),
            "unload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
