//! Metered uplinks: bytes counted against each `[uplink.budget]` per period, kept
//! across restarts, crashes and reboots. The count is the uplink interface's own
//! (rx + tx bytes): everything the ISP bills, the LAN's traffic, the router's own
//! and the probes. Bookkeeping is pure (readings and the time passed in); the
//! host is read by [`read`], the state file written by [`Meters::save`].
use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use jiff::{Span, Timestamp, Zoned, civil::Date, tz::TimeZone};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Budget, Config, Period, format_size},
    observe::link,
};

/// How often the counters are read.
pub const READ_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The uplinks whose budget is used up, by the meters as they are.
pub fn exhausted(config: &Config, meters: &Meters) -> std::collections::BTreeSet<String> {
    config
        .uplinks
        .iter()
        .filter(|u| {
            u.budget
                .as_ref()
                .zip(meters.uplinks.get(&u.name))
                .is_some_and(|(budget, meter)| meter.exhausted(budget))
        })
        .map(|u| u.name.clone())
        .collect()
}

/// An interface's byte counter and what tells one counter from another: a
/// reboot (boot id) or a new interface (ifindex) starts a new one at 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub boot_id: String,
    pub ifindex: u32,
    pub bytes: u64,
}

/// One metered uplink's count in its current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    pub used: u64,
    /// When the current period began (Unix seconds).
    pub period_start: i64,
    /// The counter at the last reading (none yet: the next reading is the base).
    pub last: Option<Reading>,
    /// Warning percentages already announced this period.
    pub warned: Vec<u8>,
}

/// Something a reading crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetEvent {
    /// A new period began: the count starts again at 0.
    NewPeriod,
    Warning {
        percent: u8,
    },
    /// The quota is used up.
    Exhausted,
}

impl Meter {
    fn new(budget: &Budget, now: &Zoned) -> Self {
        Self {
            used: 0,
            period_start: period_start(budget, now).timestamp().as_second(),
            last: None,
            warned: Vec::new(),
        }
    }

    pub fn exhausted(&self, budget: &Budget) -> bool {
        self.used >= budget.quota
    }

    /// When the current period ends (Unix seconds).
    pub fn period_end(&self, budget: &Budget, tz: &TimeZone) -> i64 {
        let start = Timestamp::from_second(self.period_start)
            .unwrap_or_default()
            .to_zoned(tz.clone());
        next_start(budget, start.date(), tz).timestamp().as_second()
    }

    /// Counts what the interface counted since the last reading, at `now`.
    pub fn advance(&mut self, budget: &Budget, reading: Reading, now: &Zoned) -> Vec<BudgetEvent> {
        let mut events = Vec::new();
        if now.timestamp().as_second() >= self.period_end(budget, now.time_zone()) {
            *self = Meter {
                last: self.last.take(),
                ..Meter::new(budget, now)
            };
            events.push(BudgetEvent::NewPeriod);
        }
        let was_exhausted = self.exhausted(budget);
        let counted = match &self.last {
            Some(last)
                if last.boot_id == reading.boot_id
                    && last.ifindex == reading.ifindex
                    && reading.bytes >= last.bytes =>
            {
                reading.bytes - last.bytes
            }
            // A reboot or a new interface: all of the new counter is new.
            Some(_) => reading.bytes,
            None => 0,
        };
        self.used = self.used.saturating_add(counted);
        self.last = Some(reading);
        let mut warnings = budget.warn_percent.clone();
        warnings.sort_unstable();
        for percent in warnings {
            let reached =
                u128::from(self.used) * 100 >= u128::from(percent) * u128::from(budget.quota);
            if reached && !self.warned.contains(&percent) {
                self.warned.push(percent);
                events.push(BudgetEvent::Warning { percent });
            }
        }
        if self.exhausted(budget) && !was_exhausted {
            events.push(BudgetEvent::Exhausted);
        }
        events
    }

    /// A new data pack: the count starts again at 0 within the period.
    pub fn reset(&mut self) {
        self.used = 0;
        self.warned.clear();
    }

    /// "4.2 MB of 50 GB (8 %)".
    pub fn describe(&self, budget: &Budget) -> String {
        format!(
            "{} of {} ({:.0} %)",
            format_size(self.used),
            format_size(budget.quota),
            100.0 * self.used as f64 / budget.quota as f64
        )
    }
}

/// Local midnight of the day the period containing `now` began.
fn period_start(budget: &Budget, now: &Zoned) -> Zoned {
    let today = now.date();
    let start = match budget.period {
        Period::Daily => today,
        Period::Weekly => {
            let back = (i64::from(today.weekday().to_monday_one_offset())
                - i64::from(budget.reset_day))
            .rem_euclid(7);
            today.checked_sub(Span::new().days(back)).unwrap_or(today)
        }
        Period::Monthly => {
            let this = on_day(today.first_of_month(), budget.reset_day);
            if today >= this {
                this
            } else {
                let previous = today
                    .first_of_month()
                    .checked_sub(Span::new().months(1))
                    .unwrap_or(today);
                on_day(previous, budget.reset_day)
            }
        }
    };
    midnight(start, now.time_zone())
}

/// Local midnight of the day after the period that began on `start`.
fn next_start(budget: &Budget, start: Date, tz: &TimeZone) -> Zoned {
    let next = match budget.period {
        Period::Daily => start.tomorrow().unwrap_or(start),
        Period::Weekly => start.checked_add(Span::new().days(7)).unwrap_or(start),
        Period::Monthly => {
            let month = start
                .first_of_month()
                .checked_add(Span::new().months(1))
                .unwrap_or(start);
            on_day(month, budget.reset_day)
        }
    };
    midnight(next, tz)
}

/// Day `day` of the month that begins on `first`, or its last day when shorter.
fn on_day(first: Date, day: u8) -> Date {
    let day = i8::try_from(day).unwrap_or(1).min(first.days_in_month());
    first.with().day(day).build().unwrap_or(first)
}

fn midnight(date: Date, tz: &TimeZone) -> Zoned {
    date.to_zoned(tz.clone())
        .unwrap_or_else(|_| Timestamp::UNIX_EPOCH.to_zoned(tz.clone()))
}

/// Every metered uplink's meter, as kept in the state file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Meters {
    #[serde(default)]
    pub uplinks: BTreeMap<String, Meter>,
    #[serde(skip)]
    path: PathBuf,
}

/// A state-file problem, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct StateError {
    path: String,
    problem: String,
}

impl Meters {
    /// The meters kept in `state_dir` (none when there is no file yet).
    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = state_dir.join("budget.json");
        let fail = |problem: String| StateError {
            path: path.display().to_string(),
            problem,
        };
        let mut meters: Meters = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| fail(format!("not a budget state file: {err}")))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Meters::default(),
            Err(err) => return Err(fail(format!("cannot read it: {err}"))),
        };
        meters.path = path;
        Ok(meters)
    }

    /// The meter of `uplink`, started now when it has none.
    pub fn meter(&mut self, uplink: &str, budget: &Budget, now: &Zoned) -> &mut Meter {
        self.uplinks
            .entry(uplink.to_owned())
            .or_insert_with(|| Meter::new(budget, now))
    }

    /// Writes the file atomically (a temporary file, synced, renamed over it), so
    /// a power cut leaves the previous or the new count, never half of one.
    pub fn save(&self) -> Result<(), StateError> {
        let fail = |problem: String| StateError {
            path: self.path.display().to_string(),
            problem,
        };
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)
            .map_err(|err| fail(format!("cannot create its directory: {err}")))?;
        let text = serde_json::to_vec_pretty(self).map_err(|err| fail(err.to_string()))?;
        let temporary = self.path.with_extension("json.new");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|err| fail(format!("cannot write it: {err}")))
    }
}

/// The interface's byte counter now, from sysfs and procfs.
pub fn read(interface: &str) -> Option<Reading> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(Reading {
        boot_id: boot_id.trim().to_owned(),
        ifindex: u32::try_from(link::number(interface, "ifindex")?).ok()?,
        bytes: link::bytes(interface)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AtQuota;

    fn budget(period: Period, reset_day: u8) -> Budget {
        Budget {
            quota: 1_000_000,
            period,
            reset_day,
            warn_percent: vec![95, 75],
            at_quota: AtQuota::Standby,
            standby_interval_ms: None,
        }
    }

    fn at(text: &str) -> Zoned {
        format!("{text}[UTC]").parse().expect("a test time")
    }

    fn reading(boot_id: &str, ifindex: u32, bytes: u64) -> Reading {
        Reading {
            boot_id: boot_id.into(),
            ifindex,
            bytes,
        }
    }

    #[test]
    fn periods_start_on_their_reset_day_at_local_midnight() {
        let start = |b: &Budget, now| period_start(b, &at(now)).date().to_string();
        let monthly = budget(Period::Monthly, 15);
        assert_eq!(start(&monthly, "2026-12-20T10:00"), "2026-12-15");
        assert_eq!(start(&monthly, "2026-12-02T10:00"), "2026-11-15");
        // Day 31 in a 30-day month is its last day.
        let end_of_month = budget(Period::Monthly, 31);
        assert_eq!(start(&end_of_month, "2026-11-30T10:00"), "2026-11-30");
        assert_eq!(start(&end_of_month, "2026-12-02T10:00"), "2026-11-30");
        // 2026-12-02 is a Wednesday; weekly from Mondays (1).
        assert_eq!(
            start(&budget(Period::Weekly, 1), "2026-12-02T10:00"),
            "2026-11-30"
        );
        assert_eq!(
            start(&budget(Period::Daily, 1), "2026-12-02T10:00"),
            "2026-12-02"
        );
        let meter = Meter::new(&monthly, &at("2026-12-02T10:00"));
        let end = Timestamp::from_second(meter.period_end(&monthly, &TimeZone::UTC)).unwrap();
        assert_eq!(end.to_string(), "2026-12-15T00:00:00Z");
    }

    #[test]
    fn counts_deltas_warns_once_each_and_is_exhausted_at_the_quota() {
        let budget = budget(Period::Monthly, 1);
        let now = at("2026-12-02T10:00");
        let mut meter = Meter::new(&budget, &now);
        assert!(
            meter
                .advance(&budget, reading("a", 3, 5_000_000), &now)
                .is_empty()
        );
        assert_eq!(meter.used, 0, "the first reading is the base");
        assert_eq!(
            meter.advance(&budget, reading("a", 3, 5_800_000), &now),
            [BudgetEvent::Warning { percent: 75 }]
        );
        assert!(
            meter
                .advance(&budget, reading("a", 3, 5_900_000), &now)
                .is_empty()
        );
        assert_eq!(
            meter.advance(&budget, reading("a", 3, 6_100_000), &now),
            [BudgetEvent::Warning { percent: 95 }, BudgetEvent::Exhausted]
        );
        assert!(meter.exhausted(&budget));
        assert_eq!(meter.describe(&budget), "1.1 MB of 1.0 MB (110 %)");
        meter.reset();
        assert!(!meter.exhausted(&budget));
        assert_eq!(
            meter.advance(&budget, reading("a", 3, 6_900_000), &now),
            [BudgetEvent::Warning { percent: 75 }]
        );
    }

    #[test]
    fn a_reboot_or_a_new_interface_counts_the_new_counter_from_zero() {
        let budget = budget(Period::Monthly, 1);
        let now = at("2026-12-02T10:00");
        let mut meter = Meter::new(&budget, &now);
        meter.advance(&budget, reading("a", 3, 1000), &now);
        meter.advance(&budget, reading("a", 3, 1500), &now);
        meter.advance(&budget, reading("b", 3, 200), &now);
        assert_eq!(meter.used, 700, "after a reboot: 500 + 200");
        meter.advance(&budget, reading("b", 9, 50), &now);
        assert_eq!(meter.used, 750, "a recreated interface");
    }

    #[test]
    fn a_new_period_starts_the_count_again() {
        let budget = budget(Period::Daily, 1);
        let mut meter = Meter::new(&budget, &at("2026-12-02T10:00"));
        meter.advance(&budget, reading("a", 3, 0), &at("2026-12-02T10:00"));
        meter.advance(&budget, reading("a", 3, 900_000), &at("2026-12-02T23:00"));
        assert_eq!(meter.warned, [75]);
        let events = meter.advance(&budget, reading("a", 3, 950_000), &at("2026-12-03T00:01"));
        assert_eq!(events, [BudgetEvent::NewPeriod]);
        assert_eq!(meter.used, 50_000, "what came after the last reading");
        assert!(meter.warned.is_empty());
    }

    #[test]
    fn meters_survive_a_save_and_load() {
        let dir = std::env::temp_dir().join(format!("multiroute-budget-{}", std::process::id()));
        let mut meters = Meters::load(&dir).unwrap();
        let budget = budget(Period::Monthly, 1);
        let now = at("2026-12-02T10:00");
        meters.meter("lte", &budget, &now).used = 42;
        meters.save().unwrap();
        let loaded = Meters::load(&dir).unwrap();
        assert_eq!(loaded.uplinks["lte"].used, 42);
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("budget.json"), "{oops").unwrap();
        let err = Meters::load(&dir).unwrap_err().to_string();
        assert!(err.contains("not a budget state file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
