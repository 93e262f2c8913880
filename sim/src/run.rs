//! One run: a scenario, a layout, a policy and a seed, in a madsim runtime
//! of its own. What happens in it is [`crate::phases`]; what survives a
//! crash is the [`crate::world::World`], what dies the [`crate::node::Node`].

use std::sync::Arc;
use std::time::Duration;

use engine::lock::LockMetrics;
use engine::{LayoutKind, LockPolicy};
use madsim::runtime::Runtime;

use crate::phases::simulate;
use crate::report::{Accumulated, RunResult};
use crate::scenario::Scenario;

/// Runs one configuration of `scenario` under `seed`; its cost is
/// measured from the runtime's creation to its drop, on this thread.
pub fn run(scenario: &Scenario, layout: LayoutKind, policy: LockPolicy, seed: u64) -> RunResult {
    let wall = std::time::Instant::now();
    let cpu = thread_cpu();
    let mut result = run_in_runtime(scenario, layout, policy, seed);
    result.wall_ms = wall.elapsed().as_secs_f64() * 1e3;
    result.cpu_ms = (thread_cpu() - cpu).as_secs_f64() * 1e3;
    result
}

fn run_in_runtime(
    scenario: &Scenario,
    layout: LayoutKind,
    policy: LockPolicy,
    seed: u64,
) -> RunResult {
    let mut rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    // Liveness: a run that does not finish in 20x its virtual duration
    // (plus slack) is stuck; madsim panics and the caller reports it.
    rt.set_time_limit(Duration::from_secs_f64(
        scenario.workload.duration_s * 20.0 + 600.0,
    ));
    let scenario = Arc::new(scenario.clone());
    rt.block_on(simulate(scenario, layout, policy, seed))
}

/// CPU time this thread has used (user and system). `getrusage`, not
/// `clock_gettime`: madsim replaces `clock_gettime` with its virtual clock
/// and panics on a thread CPU clock inside a runtime.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` only writes the `rusage` it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        let status = libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        assert_eq!(status, 0, "getrusage(RUSAGE_THREAD) failed");
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

// Locks and calls across store instances (one per node life).
impl Accumulated {
    pub fn absorb(&mut self, m: engine::store::StoreMetrics) {
        self.calls = self.calls.plus(&m.calls);
        match &mut self.locks {
            None => self.locks = Some(m.locks),
            Some(acc) => merge_locks(acc, &m.locks),
        }
    }
}

fn merge_locks(acc: &mut LockMetrics, m: &LockMetrics) {
    for (a, b) in acc.stats.iter_mut().zip(&m.stats) {
        let _ = a.wait.add(&b.wait);
        let _ = a.hold.add(&b.hold);
    }
}
