//! Expectations: the scenario's claims about its figures (`[[expect]]`),
//! checked seed by seed, and the baseline runs of other scenario files
//! they compare against (run once per file, policy and seed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engine::{LayoutKind, LockPolicy};

use crate::plan::Job;
use crate::report::{RunCost, RunResult};
use crate::scenario::{Expectation, RunRef, Scenario};
use crate::sweep;

/// Why expectations could not be checked: the exit code and the message.
#[derive(Debug)]
pub struct Stop {
    pub code: u8,
    pub message: String,
}

/// What checking a seed's expectations said.
#[derive(Debug, Default)]
pub struct Verdict {
    /// One line per expectation, in order: `(false, text)` for stdout,
    /// `(true, text)` for stderr (a metric is missing).
    pub lines: Vec<(bool, String)>,
    /// Every expectation held (and none missed its metric).
    pub held: bool,
}

pub struct Expectations<'a> {
    scenario: &'a Scenario,
    /// Baseline files are named relative to the scenario file.
    dir: PathBuf,
    baselines: HashMap<(String, LockPolicy, u64), RunResult>,
    /// Store operations of the baseline runs and what they cost (for the
    /// simulator speed line).
    pub baseline_cost: RunCost,
}

impl<'a> Expectations<'a> {
    pub fn new(scenario: &'a Scenario, path: &Path) -> Expectations<'a> {
        Expectations {
            scenario,
            dir: path.parent().unwrap_or(Path::new(".")).to_owned(),
            baselines: HashMap::new(),
            baseline_cost: RunCost::default(),
        }
    }

    /// Checks every expectation against `results` (one seed's runs),
    /// running the baselines it needs; `running` names a baseline as it starts.
    pub fn check(
        &mut self,
        seed: u64,
        results: &[RunResult],
        running: &dyn Fn(String),
    ) -> Result<Verdict, Stop> {
        let mut verdict = Verdict {
            held: true,
            ..Verdict::default()
        };
        for e in &self.scenario.expect {
            let lhs = pick(results, &e.of, e);
            let rhs = match &e.than {
                RunRef::Baseline { file, policy } => self
                    .baseline(file, *policy, seed, running)?
                    .metric(e.metric),
                than => pick(results, than, e),
            };
            let (Some(l), Some(r)) = (lhs, rhs) else {
                verdict.lines.push((
                    true,
                    format!(
                        "sim: expectation {} of {} vs {}: metric missing",
                        e.metric, e.of, e.than
                    ),
                ));
                verdict.held = false;
                continue;
            };
            let ok = e.is.holds(l, e.factor * r);
            let line = format!(
                "expect {} of {} {} {} x {} of {}: {:.3} vs {:.3} (ratio {:.2}) {}",
                e.metric,
                e.of,
                e.is,
                e.factor,
                e.metric,
                e.than,
                l,
                r,
                l / r.max(1e-12),
                if ok { "ok" } else { "FAILED" }
            );
            verdict.lines.push((false, line));
            verdict.held &= ok;
        }
        Ok(verdict)
    }

    /// The run of `file` under `policy` and `seed`, run on first use.
    fn baseline(
        &mut self,
        file: &str,
        policy: LockPolicy,
        seed: u64,
        running: &dyn Fn(String),
    ) -> Result<&RunResult, Stop> {
        let path = self.dir.join(file);
        let key = (path.display().to_string(), policy, seed);
        if !self.baselines.contains_key(&key) {
            let base = Scenario::load(&path).map_err(|err| Stop {
                code: 2,
                message: format!("sim: expectation baseline: {err}"),
            })?;
            let layout = base
                .configs(Some(policy))
                .first()
                .map_or(LayoutKind::Blobstore, |c| c.0);
            running(format!("seed {seed} baseline {}", path.display()));
            let job = Job {
                seed,
                layout,
                policy,
            };
            let r = sweep::run_one(&base, job).map_err(|err| Stop {
                code: 3,
                message: format!("sim: baseline {} did not finish: {err}", path.display()),
            })?;
            self.baseline_cost += r.cost();
            self.baselines.insert(key.clone(), r);
        }
        Ok(&self.baselines[&key])
    }
}

/// The metric of `e` in this seed's run that `who` names.
fn pick(results: &[RunResult], who: &RunRef, e: &Expectation) -> Option<f64> {
    results
        .iter()
        .find(|r| who.is(&r.layout, &r.policy))
        .and_then(|r| r.metric(e.metric))
}
