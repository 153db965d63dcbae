//! Passive detection: a busy uplink that stops answering is seen in its own
//! interface counters long before the next probe times out — packets keep going
//! out (new connections' SYNs, uploads) and nothing comes back. Its prober then
//! probes at once, with a short timeout, instead of waiting for the interval. A
//! saturated line is never "silent": its replies, ACKs and downloads keep
//! arriving, however late. The rules are pure (counts and times passed in); only
//! [`CounterFiles`] reads the host.
use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    time::{Duration, Instant},
};

use crate::observe::link;

/// Packets out with nothing back that make a line suspect.
pub const UNANSWERED: u64 = 3;
/// The least time a line must stay silent while sending before it is suspect,
/// and the least a confirming probe waits: a few round trips of a real line.
pub const MIN_SILENCE: Duration = Duration::from_millis(60);
/// How often the counters are read.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// What the interface counters say over time.
#[derive(Debug, Default)]
pub struct Silence {
    last: Option<Counters>,
    /// Packets sent since the last one received, and when the first of them went.
    unanswered: u64,
    first_unanswered: Option<Instant>,
    /// A confirming burst was sent: no other until something is received again.
    confirming: bool,
}

/// An interface's packet counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub tx: u64,
    pub rx: u64,
}

impl Silence {
    /// Takes a reading at `now`; true when the line has been sending for at least
    /// `silence` with nothing received, and it is time to probe at once.
    pub fn observe(&mut self, counters: Counters, now: Instant, silence: Duration) -> bool {
        let Some(last) = self.last.replace(counters) else {
            return false;
        };
        if counters.rx != last.rx || counters.tx < last.tx {
            // Something came back (or the counters were reset): not silent.
            self.unanswered = 0;
            self.first_unanswered = None;
            self.confirming = false;
            return false;
        }
        if counters.tx > last.tx {
            self.unanswered += counters.tx - last.tx;
            self.first_unanswered.get_or_insert(now);
        }
        let silent_for = self
            .first_unanswered
            .map_or(Duration::ZERO, |first| now.duration_since(first));
        let suspect = !self.confirming && self.unanswered >= UNANSWERED && silent_for >= silence;
        if suspect {
            self.confirming = true;
        }
        suspect
    }
}

/// An interface's two packet counter files, kept open: read every
/// [`SAMPLE_EVERY`] for every uplink, opening them each time was most of an
/// idle daemon's CPU (a re-read from offset 0 makes sysfs format them anew).
#[derive(Debug)]
pub struct CounterFiles {
    interface: String,
    /// (tx, rx); `None` until opened, and again after a failed read (the
    /// interface gone or re-created), so the next sample opens them anew.
    files: Option<(File, File)>,
}

impl CounterFiles {
    pub fn new(interface: &str) -> Self {
        CounterFiles {
            interface: interface.to_owned(),
            files: None,
        }
    }

    /// The interface's packet counters now.
    pub fn read(&mut self) -> Option<Counters> {
        if self.files.is_none() {
            let open = |name: &str| File::open(link::path(&self.interface, name)).ok();
            self.files = Some((
                open("statistics/tx_packets")?,
                open("statistics/rx_packets")?,
            ));
        }
        let counters = self.files.as_ref().and_then(|(tx, rx)| {
            Some(Counters {
                tx: number_at_start(tx)?,
                rx: number_at_start(rx)?,
            })
        });
        if counters.is_none() {
            self.files = None;
        }
        counters
    }
}

/// The decimal number a sysfs attribute file holds, read from its start.
fn number_at_start(file: &File) -> Option<u64> {
    let mut text = [0u8; 24];
    let len = file.read_at(&mut text, 0).ok()?;
    std::str::from_utf8(&text[..len]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SILENCE: Duration = Duration::from_millis(80);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn packets_out_and_nothing_back_for_the_silence_make_a_line_suspect_once() {
        let t0 = Instant::now();
        let mut line = Silence::default();
        assert!(!line.observe(Counters { tx: 100, rx: 90 }, t0, SILENCE));
        // Three SYNs go out from 20 ms on; nothing comes back.
        assert!(!line.observe(Counters { tx: 103, rx: 90 }, at(t0, 20), SILENCE));
        assert!(!line.observe(Counters { tx: 104, rx: 90 }, at(t0, 80), SILENCE));
        assert!(line.observe(Counters { tx: 105, rx: 90 }, at(t0, 100), SILENCE));
        assert!(
            !line.observe(Counters { tx: 106, rx: 90 }, at(t0, 120), SILENCE),
            "one burst until something is received"
        );
        // An answer ends the suspicion; a new silence starts over.
        assert!(!line.observe(Counters { tx: 106, rx: 91 }, at(t0, 140), SILENCE));
        assert!(!line.observe(Counters { tx: 110, rx: 91 }, at(t0, 160), SILENCE));
        assert!(line.observe(Counters { tx: 110, rx: 91 }, at(t0, 240), SILENCE));
    }

    /// Read from the host's own loopback (reading only): the files stay open
    /// between samples, and an interface that is not there reads nothing.
    #[test]
    fn counter_files_read_the_interface_and_nothing_for_a_missing_one() {
        let mut lo = CounterFiles::new("lo");
        let first = lo.read().expect("lo's counters");
        assert!(lo.files.is_some(), "kept open");
        let second = lo.read().expect("lo's counters again");
        assert!(second.tx >= first.tx && second.rx >= first.rx);
        let mut missing = CounterFiles::new("mr-no-such-if");
        assert_eq!(missing.read(), None);
        assert!(missing.files.is_none());
    }

    #[test]
    fn a_busy_line_that_receives_is_never_suspect() {
        let t0 = Instant::now();
        let mut line = Silence::default();
        for i in 0..100 {
            // A saturated upload: many packets out, a few ACKs back, every time.
            let counters = Counters {
                tx: 1000 * i,
                rx: 10 * i,
            };
            assert!(!line.observe(counters, at(t0, 20 * i), SILENCE));
        }
    }

    #[test]
    fn an_idle_line_or_too_few_packets_are_not_suspect() {
        let t0 = Instant::now();
        let mut line = Silence::default();
        line.observe(Counters { tx: 5, rx: 5 }, t0, SILENCE);
        // Nothing sent for a second: silence alone is not suspect.
        assert!(!line.observe(Counters { tx: 5, rx: 5 }, at(t0, 1000), SILENCE));
        // Two packets unanswered for long: still too few.
        assert!(!line.observe(Counters { tx: 7, rx: 5 }, at(t0, 1020), SILENCE));
        assert!(!line.observe(Counters { tx: 7, rx: 5 }, at(t0, 2000), SILENCE));
    }
}
