//! The one place that decides where concurrency primitives come from
//! (tokio's `loom` shim idea): tokio normally (madsim drives it in the
//! simulator), loom under `cfg(loom)`. No other file names tokio's locks,
//! tokio's clock or loom.

use std::time::Duration;

/// Locks that guard plain in-memory data for a few instructions and are
/// never held across an `.await`. They are deliberately *not* modelled under
/// loom: the lock plans are what loom explores (DESIGN §10), and modelling
/// every map access would multiply the search for nothing.
pub(crate) mod unmodeled {
    pub(crate) use std::sync::Mutex;
}

/// Locks that guard the lock manager's own tables. These *are* modelled:
/// two operations meet first in the table that hands out a repository's or
/// a digest's lock, and a table loom cannot see would hide that meeting
/// (a lock dropped and re-created between them looks like two unrelated
/// locks, and loom would explore one interleaving only).
pub(crate) mod modeled {
    #[cfg(loom)]
    pub(crate) use loom::sync::Mutex;
    #[cfg(not(loom))]
    pub(crate) use std::sync::Mutex;
}

#[cfg(not(loom))]
mod imp {
    pub(crate) use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
    pub(crate) use tokio::time::Instant;

    pub(crate) async fn sleep(d: std::time::Duration) {
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use super::fair::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
    pub(crate) use std::time::Instant;

    loom::lazy_static! {
        static ref SCHEDULING_POINT: loom::sync::atomic::AtomicUsize =
            loom::sync::atomic::AtomicUsize::new(0);
    }

    /// Time does not exist under loom. A sleep is a scheduling point: loom
    /// explores both this thread going on and any other running first, so
    /// a driver wrapped in a latency model makes every call a place where
    /// operations can interleave. (`yield_now` would force one switch, not
    /// explore both.)
    pub(crate) async fn sleep(_d: std::time::Duration) {
        SCHEDULING_POINT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) use imp::{Instant, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

pub(crate) async fn sleep(d: Duration) {
    imp::sleep(d).await
}

/// A reader-writer lock with tokio's fairness, for loom.
///
/// loom's own RwLock lets a reader pass a queued writer, which hides the
/// stall production sees (zot #4349: readers queued behind a waiting writer
/// behind a long reader). tokio's RwLock is FIFO: nobody overtakes an
/// earlier waiter, so a queued writer blocks every later reader. This lock
/// grants strictly in ticket order, with consecutive readers sharing.
#[cfg(loom)]
mod fair {
    use std::sync::Arc;

    use loom::sync::{Condvar, Mutex};

    #[derive(Debug, Default)]
    struct State {
        next_ticket: u64,
        /// The oldest ticket not yet granted.
        serving: u64,
        readers: u32,
        writer: bool,
    }

    #[derive(Debug)]
    pub(crate) struct RwLock<T> {
        state: Mutex<State>,
        cond: Condvar,
        _value: T,
    }

    impl<T> RwLock<T> {
        pub(crate) fn new(value: T) -> RwLock<T> {
            RwLock {
                state: Mutex::new(State::default()),
                cond: Condvar::new(),
                _value: value,
            }
        }

        fn acquire(&self, exclusive: bool) {
            let mut st = self.state.lock().unwrap();
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            // Granted strictly in ticket order; a reader may share with
            // readers, a writer needs the lock empty.
            let may_enter =
                |st: &State| st.serving == ticket && !st.writer && (!exclusive || st.readers == 0);
            while !may_enter(&st) {
                st = self.cond.wait(st).unwrap();
            }
            st.serving += 1;
            if exclusive {
                st.writer = true;
            } else {
                st.readers += 1;
            }
            drop(st);
            // The next ticket may be a reader that can now share.
            self.cond.notify_all();
        }

        fn release(&self, exclusive: bool) {
            let mut st = self.state.lock().unwrap();
            if exclusive {
                st.writer = false;
            } else {
                st.readers -= 1;
            }
            drop(st);
            self.cond.notify_all();
        }

        pub(crate) async fn read_owned(self: Arc<Self>) -> OwnedRwLockReadGuard<T> {
            self.acquire(false);
            OwnedRwLockReadGuard { lock: self }
        }

        pub(crate) async fn write_owned(self: Arc<Self>) -> OwnedRwLockWriteGuard<T> {
            self.acquire(true);
            OwnedRwLockWriteGuard { lock: self }
        }
    }

    #[derive(Debug)]
    pub(crate) struct OwnedRwLockReadGuard<T> {
        lock: Arc<RwLock<T>>,
    }

    impl<T> Drop for OwnedRwLockReadGuard<T> {
        fn drop(&mut self) {
            self.lock.release(false);
        }
    }

    #[derive(Debug)]
    pub(crate) struct OwnedRwLockWriteGuard<T> {
        lock: Arc<RwLock<T>>,
    }

    impl<T> Drop for OwnedRwLockWriteGuard<T> {
        fn drop(&mut self) {
            self.lock.release(true);
        }
    }
}
