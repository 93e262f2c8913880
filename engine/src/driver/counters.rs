//! Call counters by kind, so reports can show what each operation costs a backend.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The kinds of backend call that cost money or latency on a real store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CallKind {
    Stat,
    Get,
    Put,
    List,
    Delete,
    Link,
    Rename,
    Copy,
    Sync,
}

impl CallKind {
    pub const ALL: [CallKind; 9] = [
        CallKind::Stat,
        CallKind::Get,
        CallKind::Put,
        CallKind::List,
        CallKind::Delete,
        CallKind::Link,
        CallKind::Rename,
        CallKind::Copy,
        CallKind::Sync,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Stat => "stat",
            CallKind::Get => "get",
            CallKind::Put => "put",
            CallKind::List => "list",
            CallKind::Delete => "delete",
            CallKind::Link => "link",
            CallKind::Rename => "rename",
            CallKind::Copy => "copy",
            CallKind::Sync => "sync",
        }
    }
}

/// Live counters, shared by every clone of an instrumented driver.
#[derive(Debug, Default)]
pub struct CallCounters {
    calls: [AtomicU64; CallKind::ALL.len()],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl CallCounters {
    pub(crate) fn count(&self, kind: CallKind) {
        self.calls[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CallCounts {
        CallCounts {
            calls: std::array::from_fn(|i| self.calls[i].load(Ordering::Relaxed)),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of [`CallCounters`]; subtract two to cost an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallCounts {
    calls: [u64; CallKind::ALL.len()],
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl CallCounts {
    pub fn get(&self, kind: CallKind) -> u64 {
        self.calls[kind as usize]
    }

    /// All calls of every kind.
    pub fn total(&self) -> u64 {
        self.calls.iter().sum()
    }

    /// Calls made between `earlier` and `self`.
    pub fn since(&self, earlier: &CallCounts) -> CallCounts {
        CallCounts {
            calls: std::array::from_fn(|i| self.calls[i] - earlier.calls[i]),
            bytes_read: self.bytes_read - earlier.bytes_read,
            bytes_written: self.bytes_written - earlier.bytes_written,
        }
    }

    /// Both together (counts of two store instances, before and after a restart).
    pub fn plus(&self, other: &CallCounts) -> CallCounts {
        CallCounts {
            calls: std::array::from_fn(|i| self.calls[i] + other.calls[i]),
            bytes_read: self.bytes_read + other.bytes_read,
            bytes_written: self.bytes_written + other.bytes_written,
        }
    }

    /// `(kind, count)` for every kind, in a fixed order.
    pub fn iter(&self) -> impl Iterator<Item = (CallKind, u64)> + '_ {
        CallKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}

impl fmt::Display for CallCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (kind, n) in self.iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{}={n}", kind.as_str())?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}
