//! `[uplink.budget]`: a metered uplink's data quota, its period and what happens
//! when it is used up.
use serde::Deserialize;

use super::reference as key;

/// A validated budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Bytes per period, both directions together (what the ISP bills).
    pub quota: u64,
    pub period: Period,
    /// The day the period starts: of the month (1-31, the month's last day when
    /// shorter) or of the week (1 = Monday … 7); 1 when unset.
    pub reset_day: u8,
    /// Percentages of the quota that are announced once each per period.
    pub warn_percent: Vec<u8>,
    pub at_quota: AtQuota,
    /// How often its targets are probed while it carries no new flows.
    pub standby_interval_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Monthly,
    Weekly,
    Daily,
}

/// What a used-up quota does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtQuota {
    /// A backup of the lowest priority: carries traffic only while no other
    /// uplink is alive (its sessions move to the others).
    #[default]
    Standby,
    /// Carries nothing more: no new flows, and its sessions move to the others
    /// (TCP ones end, as in a failover).
    Stop,
    /// Only says so.
    Warn,
}

/// `[uplink.budget]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) quota: String,
    pub(super) period: Period,
    pub(super) reset_day: Option<i64>,
    #[serde(default = "default_warnings")]
    pub(super) warn_percent: Vec<i64>,
    #[serde(default)]
    pub(super) at_quota: AtQuota,
    pub(super) standby_interval_ms: Option<i64>,
}

fn default_warnings() -> Vec<i64> {
    vec![75, 95]
}

/// Validates `raw`; errors are (field, problem).
pub(super) fn validate(raw: RawBudget) -> Result<Budget, (&'static str, String)> {
    let quota = parse_size(&raw.quota).map_err(|problem| ("quota", problem))?;
    let days = match raw.period {
        Period::Monthly => 1..=31,
        Period::Weekly => 1..=7,
        Period::Daily => 1..=1,
    };
    let reset_day = match raw.reset_day {
        None => key::RESET_DAY.default_number() as u8,
        Some(day) if days.contains(&day) => day as u8,
        Some(day) => {
            return Err((
                "reset_day",
                format!(
                    "{day} must be between {} and {} for a {:?} period",
                    days.start(),
                    days.end(),
                    raw.period
                ),
            ));
        }
    };
    let warn_percent = raw
        .warn_percent
        .iter()
        .map(|&p| {
            u8::try_from(p)
                .ok()
                .filter(|p| (1..=99).contains(p))
                .ok_or_else(|| ("warn_percent", format!("{p} must be between 1 and 99")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let standby_interval_ms = raw
        .standby_interval_ms
        .map(|ms| {
            key::STANDBY_INTERVAL_MS
                .number(ms)
                .map(u64::from)
                .map_err(|problem| ("standby_interval_ms", problem))
        })
        .transpose()?;
    Ok(Budget {
        quota,
        period: raw.period,
        reset_day,
        warn_percent,
        at_quota: raw.at_quota,
        standby_interval_ms,
    })
}

/// "50GB", "1.5 GiB", "500MB", "2000000" (bytes): SI units are powers of 1000,
/// binary ones (KiB, MiB, GiB, TiB) of 1024, as ISPs and `ls -h` count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"50GB\" or \"1.5GiB\""))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "{other:?} in {text:?} is not a unit: B, KB, MB, GB, TB or KiB, MiB, GiB, TiB"
            ));
        }
    };
    let bytes = number * scale as f64;
    if bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} must be at least one byte"));
    }
    Ok(bytes as u64)
}

/// A size in the largest SI unit that keeps it readable: "4.2 MB", "50 GB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)];
    UNITS
        .iter()
        .find(|(_, scale)| bytes as f64 >= *scale)
        .map_or_else(
            || format!("{bytes} B"),
            |(unit, scale)| {
                let value = bytes as f64 / scale;
                let digits = if value < 10.0 { 1 } else { 0 };
                format!("{value:.digits$} {unit}")
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_si_and_binary_units() {
        assert_eq!(parse_size("50GB"), Ok(50_000_000_000));
        assert_eq!(parse_size("1.5 GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("4MB"), Ok(4_000_000));
        assert_eq!(parse_size("2000"), Ok(2000));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("5 GBs").unwrap_err().contains("not a unit"));
        assert!(parse_size("0").is_err());
        assert_eq!(format_size(4_200_000), "4.2 MB");
        assert_eq!(format_size(50_000_000_000), "50 GB");
        assert_eq!(format_size(999), "999 B");
    }
}
