//! From the file's shape to a [`Config`]: every key checked, the first problem
//! reported with its key. Reads nothing from the host.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use super::{
    budget, hook,
    model::*,
    numbering, on_dead,
    policy::{self, PolicyRule},
    probe_target::ProbeTarget,
    raw::*,
    reference::{self as key, Key},
};
use crate::net::{Address, Ipv6Net, PerFamily};

/// Parses and validates `text`; `file` only names the source in errors.
pub(super) fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let fail = |key: &str, problem: String| ConfigError {
        file: file.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        let problem = err.message().trim().to_owned();
        let key = err
            .span()
            .map(|span| describe_location(text, span.start))
            .unwrap_or_else(|| "(file)".into());
        fail(&key, problem)
    })?;
    Validator { fail: &fail }.config(raw)
}

/// "line N" for a parse error without a key path; toml gives byte spans only.
fn describe_location(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!("line {line}")
}

struct Validator<'a, F: Fn(&str, String) -> ConfigError> {
    fail: &'a F,
}

impl<F: Fn(&str, String) -> ConfigError> Validator<'_, F> {
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let fail = self.fail;
        if raw.lan.is_empty() {
            return Err(fail("lan", "list at least one LAN interface".into()));
        }
        for (i, name) in raw.lan.iter().enumerate() {
            self.interface_name(&format!("lan[{i}]"), name)?;
        }
        if let Some(dup) = first_duplicate(raw.lan.iter()) {
            return Err(fail("lan", format!("interface {dup:?} is listed twice")));
        }
        if raw.uplink.is_empty() {
            return Err(fail("uplink", "define at least one [[uplink]]".into()));
        }
        let routing = self.routing(raw.routing, raw.uplink.len())?;
        let health = self.health(raw.health)?;
        let mut rules = Vec::new();
        let uplinks = raw
            .uplink
            .into_iter()
            .enumerate()
            .map(|(i, uplink)| self.uplink(i, uplink, &health, &mut rules))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dup) = first_duplicate(uplinks.iter().map(|u| &u.name)) {
            return Err(fail("uplink.name", format!("{dup:?} is used twice")));
        }
        if let Some(dup) = first_duplicate(uplinks.iter().map(|u| &u.interface)) {
            return Err(fail(
                "uplink.interface",
                format!("{dup:?} is used by two uplinks"),
            ));
        }
        let known: Vec<&str> = uplinks.iter().map(|u| u.name.as_str()).collect();
        for (i, rule) in raw.rule.into_iter().enumerate() {
            rules.push(policy::validate(i, rule, &known).map_err(|(key, p)| fail(&key, p))?);
        }
        if let Some(dup) = first_duplicate(rules.iter().map(|r| &r.name)) {
            return Err(fail("rule.name", format!("{dup:?} is used twice")));
        }
        policy::check_limits(&rules).map_err(|(key, p)| fail(&key, p))?;
        if let Some(uplink) = uplinks.iter().find(|u| raw.lan.contains(&u.interface)) {
            return Err(fail(
                "uplink.interface",
                format!(
                    "{:?} of uplink {:?} is also a LAN interface",
                    uplink.interface, uplink.name
                ),
            ));
        }
        Ok(Config {
            lan: raw.lan,
            uplinks,
            health,
            routing,
            control: self.control(raw.control)?,
            balance: BalanceConfig {
                by: raw.balance.by,
                failback: raw.balance.failback,
            },
            datapath: DatapathConfig {
                fast_path: raw.datapath.fast_path,
            },
            rules,
            metrics: self.metrics(raw.metrics)?,
            web: self.web(raw.web)?,
            hooks: raw
                .hook
                .into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    hook::validate(raw)
                        .map_err(|(field, problem)| fail(&format!("hook[{i}].{field}"), problem))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    fn control(&self, raw: RawControl) -> Result<ControlConfig, ConfigError> {
        if !raw.state_dir.is_absolute() {
            return Err((self.fail)(
                "control.state_dir",
                format!("{} must be an absolute path", raw.state_dir.display()),
            ));
        }
        Ok(ControlConfig {
            socket: raw.socket,
            state_dir: raw.state_dir,
        })
    }

    fn web(&self, raw: RawWeb) -> Result<WebConfig, ConfigError> {
        let fail = self.fail;
        let listen: Option<std::net::SocketAddr> = raw
            .listen
            .map(|text| {
                text.parse()
                    .map_err(|_| fail("web.listen", key::WEB_LISTEN.not_of_form(&text)))
            })
            .transpose()?;
        // The token never appears in an error: it is a secret.
        if let Some(token) = &raw.token
            && (token.len() < 16
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(fail(
                "web.token",
                format!("must be {}", key::WEB_TOKEN.form()),
            ));
        }
        if let Some(address) = listen
            && !address.ip().is_loopback()
            && raw.token.is_none()
        {
            return Err(fail(
                "web.token",
                format!(
                    "required: {address} is not a loopback address, and the page must not be open to anyone on it"
                ),
            ));
        }
        Ok(WebConfig {
            listen,
            token: raw.token,
        })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsConfig, ConfigError> {
        let listen = raw
            .listen
            .map(|text| {
                text.parse().map_err(|_| {
                    (self.fail)("metrics.listen", key::METRICS_LISTEN.not_of_form(&text))
                })
            })
            .transpose()?;
        Ok(MetricsConfig { listen })
    }

    /// One `[[uplink]]`; its `pin` and `pin_from` become rules in `rules`.
    fn uplink(
        &self,
        i: usize,
        raw: RawUplink,
        health: &HealthConfig,
        rules: &mut Vec<PolicyRule>,
    ) -> Result<UplinkConfig, ConfigError> {
        let fail = self.fail;
        let key = |field: &str| format!("uplink[{i}].{field}");
        self.uplink_name(&key("name"), &raw.name)?;
        self.interface_name(&key("interface"), &raw.interface)?;
        let gateway = PerFamily {
            v4: self
                .optional_address::<Ipv4Addr>(&key("gateway"), raw.gateway)?
                .map(IpAddr::V4),
            v6: self
                .optional_address::<Ipv6Addr>(&key("gateway6"), raw.gateway6)?
                .map(IpAddr::V6),
        };
        let nat6 = self.nat6(&key, raw.nat6.as_deref(), raw.npt_prefix)?;
        let weight = self.ranged(&key("weight"), raw.weight, &key::WEIGHT)?;
        let tier = self.ranged(&key("tier"), raw.tier, &key::TIER)?;
        let prefixes = |field: &str, list: &[String]| {
            list.iter()
                .map(|text| {
                    policy::parse_prefix(text).map_err(|problem| fail(&key(field), problem))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        rules.extend(policy::pin_rules(
            &raw.name,
            prefixes("pin", &raw.pin)?,
            prefixes("pin_from", &raw.pin_from)?,
        ));
        let probe = match raw.probe {
            Some(list) => self.probe_targets(&key("probe"), &list)?,
            None => Vec::new(),
        };
        let quality = self.quality(&key("health"), raw.health, health.quality)?;
        let targets = if probe.is_empty() {
            health.targets.len()
        } else {
            probe.len()
        };
        if quality.targets_needed as usize > targets {
            let written = match raw.health.targets_needed {
                Some(_) => key("health.targets_needed"),
                None => "health.targets_needed".to_owned(),
            };
            return Err(fail(
                &written,
                format!(
                    "{} targets needed, but uplink {:?} is probed at {targets}",
                    quality.targets_needed, raw.name
                ),
            ));
        }
        let budget = raw
            .budget
            .map(|budget| {
                budget::validate(budget)
                    .map_err(|(field, problem)| fail(&key(&format!("budget.{field}")), problem))
            })
            .transpose()?;
        let on_dead = on_dead::validate(raw.on_dead, raw.on_dead_after_ms)
            .map_err(|(field, problem)| fail(&key(field), problem))?;
        Ok(UplinkConfig {
            budget,
            on_dead,
            name: raw.name,
            interface: raw.interface,
            gateway,
            nat6,
            weight,
            tier,
            probe,
            quality,
        })
    }

    /// Quality limits under `section`: what `raw` sets, the rest from `inherited`.
    fn quality(
        &self,
        section: &str,
        raw: RawQuality,
        inherited: Quality,
    ) -> Result<Quality, ConfigError> {
        // A recover limit's range ends at its max (`max` narrows the key's own).
        let value = |spec: &Key, set: Option<i64>, had: u32, max: Option<u32>| match set {
            Some(value) => {
                let (min, own_max) = spec.range();
                spec.number_within(value, min, max.map_or(own_max, i64::from))
                    .map_err(|problem| (self.fail)(&format!("{section}.{}", spec.name), problem))
            }
            None => Ok(max.map_or(had, |max| had.min(max))),
        };
        let max_loss_percent = value(
            &key::MAX_LOSS_PERCENT,
            raw.max_loss_percent,
            inherited.max_loss_percent,
            None,
        )?;
        let max_rtt_ms = value(&key::MAX_RTT_MS, raw.max_rtt_ms, inherited.max_rtt_ms, None)?;
        Ok(Quality {
            max_loss_percent,
            max_rtt_ms,
            recover_loss_percent: value(
                &key::RECOVER_LOSS_PERCENT,
                raw.recover_loss_percent,
                inherited.recover_loss_percent,
                Some(max_loss_percent),
            )?,
            recover_rtt_ms: value(
                &key::RECOVER_RTT_MS,
                raw.recover_rtt_ms,
                inherited.recover_rtt_ms,
                Some(max_rtt_ms),
            )?,
            window: value(&key::WINDOW, raw.window, inherited.window, None)?,
            targets_needed: value(
                &key::TARGETS_NEEDED,
                raw.targets_needed,
                inherited.targets_needed,
                None,
            )?,
            min_state_ms: value(
                &key::MIN_STATE_MS,
                raw.min_state_ms,
                inherited.min_state_ms,
                None,
            )?,
        })
    }

    /// 1-15 characters (an interface name's limit, as the datapath stores it).
    fn uplink_name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        let name_ok = (1..=15).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if name_ok {
            Ok(())
        } else {
            Err((self.fail)(
                key,
                format!("{name:?} must be {}", key::UPLINK_NAME_FORM),
            ))
        }
    }

    /// `nat6` with its `npt_prefix` (`key` names a field of the uplink).
    fn nat6(
        &self,
        key: &dyn Fn(&str) -> String,
        nat6: Option<&str>,
        npt_prefix: Option<String>,
    ) -> Result<Nat6, ConfigError> {
        let fail = self.fail;
        let npt_prefix = npt_prefix
            .map(|text| {
                text.parse::<Ipv6Net>().map_err(|problem| {
                    fail(
                        &key("npt_prefix"),
                        format!("{text:?} is not an IPv6 prefix: {problem}"),
                    )
                })
            })
            .transpose()?;
        let nat6 = match nat6 {
            None | Some("masquerade") => Nat6::Masquerade,
            Some("npt") => Nat6::Npt { prefix: npt_prefix },
            Some("none") => Nat6::None,
            Some(other) => return Err(fail(&key("nat6"), key::NAT6.not_a_choice(other))),
        };
        if npt_prefix.is_some() && !matches!(nat6, Nat6::Npt { .. }) {
            return Err(fail(
                &key("npt_prefix"),
                "only applies with nat6 = \"npt\"".into(),
            ));
        }
        Ok(nat6)
    }

    /// A whole number within the range of `spec`, written at `key`.
    fn ranged(&self, key: &str, value: i64, spec: &Key) -> Result<u32, ConfigError> {
        spec.number(value)
            .map_err(|problem| (self.fail)(key, problem))
    }

    fn health(&self, raw: RawHealth) -> Result<HealthConfig, ConfigError> {
        let positive =
            |spec: &Key, value: i64| self.ranged(&format!("health.{}", spec.name), value, spec);
        let targets = self.probe_targets("health.targets", &raw.targets)?;
        if targets.is_empty() {
            return Err((self.fail)(
                "health.targets",
                "list at least one target (\"gateway\" or an address)".into(),
            ));
        }
        Ok(HealthConfig {
            targets,
            interval_ms: positive(&key::INTERVAL_MS, raw.interval_ms)?.into(),
            timeout_ms: positive(&key::TIMEOUT_MS, raw.timeout_ms)?.into(),
            down: positive(&key::DOWN, raw.down)?,
            up: positive(&key::UP, raw.up)?,
            quality: self.quality("health", raw.quality, Quality::default())?,
        })
    }

    fn routing(&self, raw: RawRouting, uplinks: usize) -> Result<RoutingConfig, ConfigError> {
        let fail = self.fail;
        let max_uplinks = multiroute_ebpf::MAX_UPLINKS as usize;
        if uplinks > max_uplinks {
            return Err(fail(
                "uplink",
                format!("{uplinks} uplinks defined; at most {max_uplinks} are supported"),
            ));
        }
        // Tables 253-255 are the kernel's default/main/local; 0 is "unspec".
        let last_table = raw.table_base.saturating_add(uplinks as i64);
        if raw.table_base < 1
            || last_table > u32::MAX as i64
            || (raw.table_base..=last_table).any(|t| (253..=255).contains(&t))
        {
            return Err(fail(
                "routing.table_base",
                format!(
                    "{} gives tables {}..={last_table}, which must be positive and avoid 253-255 (default, main, local)",
                    raw.table_base, raw.table_base
                ),
            ));
        }
        // Priority 0 is the local table's rule and 32766/32767 are main/default.
        if raw.rule_priority < 1 || raw.rule_priority + RULE_PRIORITY_SPAN as i64 > 32_766 {
            return Err(fail(
                "routing.rule_priority",
                format!(
                    "{} must leave room for {RULE_PRIORITY_SPAN} rules between 1 and 32765",
                    raw.rule_priority
                ),
            ));
        }
        let mask = u32::try_from(raw.fwmark_mask)
            .ok()
            .filter(|m| *m != 0)
            .ok_or_else(|| {
                fail(
                    "routing.fwmark_mask",
                    format!("{:#x} must be a non-zero 32-bit mask", raw.fwmark_mask),
                )
            })?;
        if (numbering::slot_capacity(mask) as usize) < uplinks {
            return Err(fail(
                "routing.fwmark_mask",
                format!(
                    "{mask:#x} is too small for {uplinks} uplinks: it needs {} contiguous bits from its lowest set bit (the uplinks' numbers plus one bit for replies to inbound connections)",
                    usize::BITS - uplinks.leading_zeros() + 1
                ),
            ));
        }
        if !raw.pin_path.is_absolute() {
            return Err(fail(
                "routing.pin_path",
                format!("{} must be an absolute path", raw.pin_path.display()),
            ));
        }
        Ok(RoutingConfig {
            table_base: raw.table_base as u32,
            rule_priority: raw.rule_priority as u32,
            fwmark_mask: mask,
            main_default: raw.main_default,
            pin_path: raw.pin_path,
        })
    }

    fn probe_targets(&self, key: &str, list: &[String]) -> Result<Vec<ProbeTarget>, ConfigError> {
        list.iter()
            .map(|text| text.parse().map_err(|problem| (self.fail)(key, problem)))
            .collect()
    }

    /// An optional address of `A`'s family at `key`.
    fn optional_address<A: Address>(
        &self,
        key: &str,
        text: Option<String>,
    ) -> Result<Option<A>, ConfigError> {
        text.map(|text| {
            text.parse::<A>()
                .map_err(|_| (self.fail)(key, format!("{text:?} is not an {} address", A::FAMILY)))
        })
        .transpose()
    }

    fn interface_name(&self, key: &str, name: &str) -> Result<(), ConfigError> {
        // IFNAMSIZ is 16 including the NUL; "/" and whitespace are refused by the kernel.
        let ok = (1..=15).contains(&name.len())
            && !name.contains(['/', ' ', '\t', '\n'])
            && name != "."
            && name != "..";
        if ok {
            Ok(())
        } else {
            Err((self.fail)(
                key,
                format!("{name:?} is not {}", key::INTERFACE_FORM),
            ))
        }
    }
}

fn first_duplicate<'a>(items: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}
