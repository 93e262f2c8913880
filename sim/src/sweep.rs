//! Running a sweep's runs several at a time, with results in plan order.
//!
//! Every run is its own madsim runtime on its own thread, and the engine
//! and the simulator keep no process-wide state, so runs are independent:
//! running them side by side changes no result (the final-state hashes are
//! the same at any `--jobs`) and only how long the sweep takes. Results are
//! handed back in the order they were planned, so the output reads the
//! same whatever finishes first.
//!
//! Runs *start* in another order ([`start_order`]): within each seed, the
//! longest first, so the last run to start is a short one and no core
//! idles at the end while another finishes a long run. With one seed and
//! three policies on two cores that is the difference between waiting for
//! `global` then `striped` on one core, and waiting for `striped` alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use crate::plan::{Job, start_order};
use crate::report::RunResult;
use crate::run::run;
use crate::scenario::Scenario;

/// Wall-clock bound on one run: madsim's time limit catches runs stuck
/// in virtual time; this catches runs that spin without letting virtual
/// time advance (a livelock at one instant).
const WATCHDOG: Duration = Duration::from_secs(600);

type Outcome = std::thread::Result<RunResult>;

/// One run on this thread; a panic (madsim's time limit) is caught and
/// handed back instead of taking the process down.
fn attempt(scenario: &Scenario, job: Job) -> Outcome {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(scenario, job.layout, job.policy, job.seed)
    }))
}

/// The result of a run, or why there is none (a panic, or the watchdog).
fn settle(outcome: Result<Outcome, RecvTimeoutError>) -> Result<RunResult, String> {
    match outcome {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())),
        Err(RecvTimeoutError::Timeout) => Err(format!(
            "no result after {} wall-clock seconds (livelock?)",
            WATCHDOG.as_secs()
        )),
        Err(RecvTimeoutError::Disconnected) => Err("the run's thread vanished".into()),
    }
}

/// Runs one job now, on its own thread, and waits for it.
pub fn run_one(scenario: &Scenario, job: Job) -> Result<RunResult, String> {
    Sweep::new(scenario, vec![job], 1)
        .next_result()
        .expect("one job planned")
        .1
}

/// A planned sequence of runs, worked off by `jobs` threads that each take
/// the next unstarted run, so no core idles behind a slow run.
pub struct Sweep {
    results: Receiver<(usize, Outcome)>,
    /// Finished out of plan order, waiting for the runs planned before them.
    early: BTreeMap<usize, Outcome>,
    next: usize,
    plan: Arc<Vec<Job>>,
    /// Set when the sweep is dropped (an early exit): workers stop taking runs.
    cancelled: Arc<AtomicBool>,
}

impl Sweep {
    pub fn new(scenario: &Scenario, plan: Vec<Job>, jobs: usize) -> Sweep {
        let order = Arc::new(start_order(&plan));
        let plan = Arc::new(plan);
        let taken = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicBool::new(false));
        let (tx, results) = channel();
        for _ in 0..jobs.clamp(1, plan.len().max(1)) {
            let (scenario, plan, order, taken, cancelled, tx) = (
                scenario.clone(),
                plan.clone(),
                order.clone(),
                taken.clone(),
                cancelled.clone(),
                tx.clone(),
            );
            std::thread::spawn(move || {
                while !cancelled.load(Ordering::Relaxed) {
                    let Some(&i) = order.get(taken.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    let job = &plan[i];
                    let outcome = attempt(&scenario, *job);
                    // A run that panicked may leave this thread's simulator
                    // state behind, so its thread runs nothing more. The
                    // sweep reports that run when its turn comes and stops
                    // there, before any run this thread would have taken.
                    let panicked = outcome.is_err();
                    if tx.send((i, outcome)).is_err() || panicked {
                        break;
                    }
                }
            });
        }
        Sweep {
            results,
            early: BTreeMap::new(),
            next: 0,
            plan,
            cancelled,
        }
    }

    /// The next run in plan order (`None` when the plan is done).
    pub fn next_result(&mut self) -> Option<(Job, Result<RunResult, String>)> {
        let job = *self.plan.get(self.next)?;
        let outcome = loop {
            if let Some(outcome) = self.early.remove(&self.next) {
                break Ok(outcome);
            }
            // The watchdog restarts at every result: a livelocked run is
            // reported once the runs beside it have finished.
            match self.results.recv_timeout(WATCHDOG) {
                Ok((i, outcome)) => {
                    self.early.insert(i, outcome);
                }
                Err(e) => break Err(e),
            }
        };
        self.next += 1;
        Some((job, settle(outcome)))
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// The default parallelism: one run per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
