//! Lock wait and hold times per domain and mode, in HDR histograms
//! (nanoseconds; virtual time under madsim).

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::Mode;
use crate::sync::unmodeled::Mutex;

/// The lock domains of DESIGN §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    Global,
    Blobstore,
    Repo,
    Digest,
}

impl Domain {
    /// Every domain, in the canonical acquisition order (DESIGN §5).
    pub const ALL: [Domain; 4] = [
        Domain::Global,
        Domain::Blobstore,
        Domain::Repo,
        Domain::Digest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Global => "global",
            Domain::Blobstore => "blobstore",
            Domain::Repo => "repo",
            Domain::Digest => "digest",
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn slot(domain: Domain, mode: Mode) -> usize {
    domain as usize * 2 + mode as usize
}

const SLOTS: usize = Domain::ALL.len() * 2;

/// Live recorder, shared by every guard of one manager.
///
/// A slot's histograms (~74 KB) are made at its first acquisition: a
/// policy takes two to six of the eight domain and mode pairs, and the
/// simulator opens a store (and so a recorder) after every restart and
/// check, where making all eight up front took ~1% of a run's CPU.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    slots: Mutex<[Option<Box<Slot>>; SLOTS]>,
}

#[derive(Debug, Clone)]
struct Slot {
    wait: Histogram<u64>,
    hold: Histogram<u64>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            wait: histogram(),
            hold: histogram(),
        }
    }
}

/// 1 ns to 1 hour at 2 significant figures (1% precision, ~37 KB): fixed
/// memory. (An auto-resizing histogram would not help: `saturating_record`
/// clamps to the current bound instead of growing, which once made every
/// wait read 0.)
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 2).expect("valid bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Recorder {
    fn record(
        &self,
        domain: Domain,
        mode: Mode,
        pick: impl FnOnce(&mut Slot) -> &mut Histogram<u64>,
        d: Duration,
    ) {
        let mut slots = self.slots.lock().unwrap();
        let slot = slots[slot(domain, mode)].get_or_insert_with(|| Box::new(Slot::new()));
        pick(slot).saturating_record(nanos(d));
    }

    pub(crate) fn waited(&self, domain: Domain, mode: Mode, d: Duration) {
        self.record(domain, mode, |s| &mut s.wait, d);
    }

    pub(crate) fn held(&self, domain: Domain, mode: Mode, d: Duration) {
        self.record(domain, mode, |s| &mut s.hold, d);
    }

    /// Acquisitions so far, without copying histograms.
    pub(crate) fn acquisitions(&self, domain: Domain, mode: Mode) -> u64 {
        self.slots.lock().unwrap()[slot(domain, mode)]
            .as_ref()
            .map_or(0, |s| s.wait.len())
    }

    pub(crate) fn snapshot(&self) -> LockMetrics {
        let slots = self.slots.lock().unwrap();
        let mut stats = Vec::new();
        for domain in Domain::ALL {
            for mode in [Mode::Shared, Mode::Exclusive] {
                let Slot { wait, hold } = slots[slot(domain, mode)]
                    .as_deref()
                    .map_or_else(Slot::new, Slot::clone);
                stats.push(LockStats {
                    domain,
                    mode,
                    wait,
                    hold,
                });
            }
        }
        LockMetrics { stats }
    }
}

/// Wait and hold histograms for one domain and mode.
#[derive(Debug, Clone)]
pub struct LockStats {
    pub domain: Domain,
    pub mode: Mode,
    /// Nanoseconds from asking to holding.
    pub wait: Histogram<u64>,
    /// Nanoseconds from holding to release.
    pub hold: Histogram<u64>,
}

impl LockStats {
    pub fn acquisitions(&self) -> u64 {
        self.wait.len()
    }

    /// Total time held, in nanoseconds (sum over acquisitions).
    pub fn total_hold_ns(&self) -> u64 {
        self.hold
            .iter_recorded()
            .map(|v| v.value_iterated_to() * v.count_at_value())
            .sum()
    }
}

/// A snapshot of every domain and mode.
#[derive(Debug, Clone)]
pub struct LockMetrics {
    pub stats: Vec<LockStats>,
}

impl LockMetrics {
    pub fn get(&self, domain: Domain, mode: Mode) -> &LockStats {
        &self.stats[slot(domain, mode)]
    }
}
