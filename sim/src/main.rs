//! `cargo run -p sim -- scenarios/<x>.toml`: deterministic replay of a
//! multi-client, multi-repo workload with faults, one run per lock policy,
//! side by side, in virtual time.
//!
//! This file only wires: `scenario` (what to run), `world` (what survives
//! a crash: disk, metadata, driver), `node` (what dies: the store, its
//! clients and GC), `workload` (the clients), `faults` (the fault plan,
//! drawn and executed against the world), `checker` (the invariants),
//! `migration` (the legacy dataset and its conversion), `phases` (one run:
//! migration, workload with faults, settle), `run` (one madsim runtime per
//! configuration and seed), `sweep` (runs side by side, results in plan
//! order), `expectations` (claims about the figures, and baselines),
//! `report` (table, JSON, HTML).
//!
//! Exit codes: 0 clean; 1 an invariant was violated or a run was not
//! deterministic; 2 a bad scenario or option; 3 a run did not finish
//! (liveness); 4 an expectation about the figures did not hold.
#![cfg_attr(not(madsim), allow(dead_code, unused_imports))]

mod broken;
mod checker;
#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
mod expectations;
mod faults;
#[cfg(not(madsim))]
mod launcher;
mod migration;
#[cfg(madsim)]
mod node;
#[cfg(madsim)]
mod phases;
mod plan;
mod report;
mod rng;
#[cfg(madsim)]
mod run;
mod scenario;
#[cfg(madsim)]
mod sweep;
mod workload;
mod world;

use std::process::ExitCode;

/// mimalloc, as for every binary of this project: under glibc's malloc
/// the simulator ran slower (figures in README, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(not(madsim))]
fn main() -> ExitCode {
    launcher::relaunch()
}

#[cfg(madsim)]
fn main() -> ExitCode {
    app::main()
}

#[cfg(madsim)]
mod app {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use clap::Parser;
    use engine::LockPolicy;
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

    use crate::expectations::Expectations;
    use crate::plan::Job;
    use crate::report::{self, RunCost, RunResult};
    use crate::scenario::Scenario;
    use crate::sweep::{self, Sweep};

    #[derive(Debug, Parser)]
    #[command(
        name = "sim",
        about = "Deterministic replay of ocistore workloads with faults (madsim)"
    )]
    struct Args {
        /// The scenario file (see scenarios/README.md).
        scenario: PathBuf,
        /// Seed to run (default: the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Sweep this many consecutive seeds, starting at the seed.
        #[arg(long)]
        seeds: Option<u64>,
        /// Run every configuration twice and compare final-state hashes.
        #[arg(long)]
        check_determinism: bool,
        /// Write every result as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an HTML page (the first seed's results).
        #[arg(long)]
        html: Option<PathBuf>,
        /// Run one lock policy only.
        #[arg(long, value_parser = |s: &str| s.parse::<LockPolicy>())]
        policy: Option<LockPolicy>,
        /// Print only the summary lines.
        #[arg(long)]
        quiet: bool,
        /// Runs at a time (default: one per core). Runs are independent
        /// runtimes: this changes how long a sweep takes, never a result.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
        jobs: Option<u64>,
    }

    fn replay(path: &Path, seed: u64, policy: &str) -> String {
        format!(
            "cargo run -p sim -- {} --seed {seed} --policy {policy}",
            path.display()
        )
    }

    /// Runs finished out of runs planned, with the one in progress named.
    /// Drawn on stderr only when it is a terminal (indicatif hides it
    /// otherwise), so piped output and CI logs stay plain text; everything
    /// else the simulator prints goes through [`ProgressBar::suspend`].
    fn progress(runs: u64) -> ProgressBar {
        // Cleared when dropped, also on an early exit.
        let bar = ProgressBar::with_draw_target(Some(runs), ProgressDrawTarget::stderr())
            .with_finish(ProgressFinish::AndClear);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} runs (eta {eta})  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    }

    /// Both rates: what a user waits for (the sweep's wall clock, runs side
    /// by side), and what one run does on one thread, per second of its
    /// wall time and per second of its thread's CPU time.
    fn speed_line(cost: &RunCost, wall_s: f64, jobs: usize) -> String {
        let (per_run_wall, per_run_cpu) = cost.rates();
        format!(
            "simulator speed: {:.0} store operations per wall-clock second ({} in {wall_s:.2} s, \
             {jobs} run(s) at a time); one run on one thread: {per_run_wall:.0} per second \
             ({per_run_cpu:.0} per CPU-second of its thread)",
            cost.store_ops as f64 / wall_s.max(1e-9),
            cost.store_ops,
        )
    }

    /// Every seed, then every configuration, `repeats` times each.
    fn plan(
        seeds: &[u64],
        configs: &[(engine::LayoutKind, LockPolicy)],
        repeats: usize,
    ) -> Vec<Job> {
        let mut plan = Vec::new();
        for &seed in seeds {
            for &(layout, policy) in configs {
                for _ in 0..repeats {
                    plan.push(Job {
                        seed,
                        layout,
                        policy,
                    });
                }
            }
        }
        plan
    }

    /// The summary line of one seed of a sweep.
    fn seed_summary(results: &[RunResult]) -> String {
        results
            .iter()
            .map(|r| {
                format!(
                    "{} {:.0} ops/s hash {}",
                    r.label(),
                    r.throughput,
                    r.final_hash
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn main() -> ExitCode {
        let args = Args::parse();
        let scenario = match Scenario::load(&args.scenario) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sim: {e}");
                return ExitCode::from(2);
            }
        };
        let first = args.seed.unwrap_or(scenario.seed);
        let seeds: Vec<u64> = (first..first + args.seeds.unwrap_or(1).max(1)).collect();
        let configs = scenario.configs(args.policy);
        if configs.is_empty() {
            eprintln!("sim: the scenario does not run policy {:?}", args.policy);
            return ExitCode::from(2);
        }
        let sweep = seeds.len() > 1;
        let mut all: Vec<RunResult> = Vec::new();
        let mut expectations = Expectations::new(&scenario, &args.scenario);
        let mut code = 0u8;
        let mut cost = RunCost::default();
        let repeats = if args.check_determinism { 2 } else { 1 };
        let plan = plan(&seeds, &configs, repeats);
        let jobs = args.jobs.map_or_else(sweep::default_jobs, |j| j as usize);
        let bar = progress(plan.len() as u64);
        let started = std::time::Instant::now();
        let mut runs = Sweep::new(&scenario, plan, jobs);
        // Anything printed while the bar is drawn goes above it.
        macro_rules! say {
            ($($t:tt)*) => { bar.suspend(|| println!($($t)*)) };
        }
        macro_rules! warn {
            ($($t:tt)*) => { bar.suspend(|| eprintln!($($t)*)) };
        }
        for (i, seed) in seeds.iter().copied().enumerate() {
            say!(
                "SEED={seed} scenario={} configs={}",
                scenario.name,
                configs.len()
            );
            let mut results = Vec::new();
            for &(layout, policy) in &configs {
                bar.set_message(format!("seed {seed} {layout}/{policy}"));
                let (job, r) = runs.next_result().expect("planned");
                debug_assert_eq!((job.seed, job.layout, job.policy), (seed, layout, policy));
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("sim: {layout}/{policy} seed {seed} did not finish: {e}");
                        warn!("replay: {}", replay(&args.scenario, seed, policy.as_str()));
                        return ExitCode::from(3);
                    }
                };
                bar.inc(1);
                if args.check_determinism {
                    let (_, again) = runs.next_result().expect("planned");
                    bar.inc(1);
                    match again {
                        Ok(again) if again.final_hash == r.final_hash && again.ops == r.ops => {}
                        Ok(again) => {
                            warn!(
                                "sim: NOT DETERMINISTIC: {layout}/{policy} seed {seed}: hash {} then {}, ops {} then {}",
                                r.final_hash, again.final_hash, r.ops, again.ops
                            );
                            code = 1;
                        }
                        Err(e) => {
                            warn!(
                                "sim: second run of {layout}/{policy} seed {seed} did not finish: {e}"
                            );
                            return ExitCode::from(3);
                        }
                    }
                }
                cost += r.cost();
                if !r.violations.is_empty() {
                    warn!(
                        "sim: {} violation(s) in {} seed {seed}:",
                        r.violations.len(),
                        r.label()
                    );
                    for v in r.violations.iter().take(20) {
                        warn!("  {v}");
                    }
                    warn!("replay: {}", replay(&args.scenario, seed, &r.policy));
                    code = 1;
                }
                results.push(r);
            }
            if !args.quiet && !sweep {
                say!("{}", report::table(&results));
            }
            if sweep {
                warn!(
                    "[{}/{}] seed {seed}: {}",
                    i + 1,
                    seeds.len(),
                    seed_summary(&results)
                );
            }
            match expectations.check(seed, &results, &|m| bar.set_message(m)) {
                Ok(verdict) => {
                    for (to_stderr, line) in verdict.lines {
                        if to_stderr {
                            warn!("{line}");
                        } else {
                            say!("{line}");
                        }
                    }
                    if !verdict.held {
                        code = code.max(4);
                    }
                }
                Err(stop) => {
                    warn!("{}", stop.message);
                    return ExitCode::from(stop.code);
                }
            }
            if i == 0
                && let Some(path) = &args.html
            {
                let command = format!(
                    "cargo run -p sim -- {} --seed {seed} --html {}",
                    args.scenario.display(),
                    path.display()
                );
                if let Err(e) = std::fs::write(path, report::html(&scenario, &results, &command)) {
                    warn!("sim: {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            all.extend(results);
        }
        bar.finish_and_clear();
        if let Some(path) = &args.json
            && let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&all).expect("json"))
        {
            eprintln!("sim: {}: {e}", path.display());
            return ExitCode::from(2);
        }
        cost += expectations.baseline_cost;
        println!(
            "{}",
            speed_line(&cost, started.elapsed().as_secs_f64(), jobs)
        );
        if code == 0 {
            println!("all invariants held");
        }
        ExitCode::from(code)
    }
}
