//! `report`: renders `reports/index.html` from this run's bench and
//! simulator results. `scripts/bench-report` runs everything and then this.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use report::inputs::Inputs;
use report::page::{self, Provenance, TARGET_RATIO};
use report::provenance;

#[derive(Debug, Parser)]
#[command(about = "Render the lab's HTML report from criterion, bench and simulator results")]
struct Args {
    /// criterion's output directory.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// The benches' and the simulator's JSON (`ocistore-bench/*.json`, `sim/*.json`).
    #[arg(long, default_value = "target/ocistore-bench")]
    results: PathBuf,
    /// The page to write.
    #[arg(long, default_value = "reports/index.html")]
    out: PathBuf,
    /// The command the page says regenerates it.
    #[arg(long, default_value = "scripts/bench-report")]
    command: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let inputs = Inputs::load(&args.criterion, &args.results);
    let provenance = Provenance {
        machine: provenance::machine(),
        commit: provenance::commit(&std::env::current_dir().unwrap_or_default()),
        date: provenance::now_utc(),
        command: args.command.clone(),
    };
    let html = page::render(&inputs, &provenance);
    if let Some(dir) = args.out.parent()
        && !dir.as_os_str().is_empty()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("report: {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    if let Err(e) = std::fs::write(&args.out, html) {
        eprintln!("report: {}: {e}", args.out.display());
        return ExitCode::from(2);
    }
    println!(
        "wrote {} from {} criterion estimates and {} simulator runs",
        args.out.display(),
        inputs.estimates.len(),
        inputs.sim.len()
    );
    for problem in &inputs.problems {
        eprintln!("report: unreadable input: {problem}");
    }
    match page::target_ratio(&inputs) {
        Some(r) => println!(
            "target: striped/global at {} repos on {} = {r:.2}x (need >= {TARGET_RATIO}x): {}",
            page::TARGET_REPOS,
            page::TARGET_BACKEND,
            if r >= TARGET_RATIO { "met" } else { "NOT met" }
        ),
        None => println!("target: not measured in these inputs"),
    }
    match report::serve::push_ratio(&inputs) {
        Some(r) => println!(
            "target: serve push, {} / {} at {} clients = {r:.2}x (need >= {}x): {}",
            report::serve::STRIPED,
            report::serve::DISTRIBUTION,
            report::serve::RATIO_CLIENTS,
            report::serve::PUSH_RATIO_TARGET,
            if r >= report::serve::PUSH_RATIO_TARGET {
                "met"
            } else {
                "NOT met"
            }
        ),
        None => println!("target: serve push ratio not measured in these inputs"),
    }
    if inputs.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
