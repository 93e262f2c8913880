//! The one place that decides where concurrency primitives come from
//! (tokio's shim idea): tokio normally (madsim drives it in the simulator),
//! loom under `cfg(loom)`. No other file names tokio's locks or loom.

use std::time::Duration;

/// Locks that guard plain in-memory data for a few instructions and are
/// never held across an `.await`. They are deliberately *not* modelled under
/// loom: the lock plans are what loom explores (DESIGN §10), and modelling
/// every map access would multiply the search for nothing.
pub(crate) mod unmodeled {
    pub(crate) use std::sync::Mutex;
}

/// Sleeps for `d`: real time normally, virtual time under madsim. Under loom
/// time does not exist; a sleep is a yield point.
#[cfg(not(loom))]
pub(crate) async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

#[cfg(loom)]
pub(crate) async fn sleep(_d: Duration) {
    loom::thread::yield_now();
}
