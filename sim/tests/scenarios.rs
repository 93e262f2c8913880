//! The simulator as users run it (`cargo run -p sim -- x.toml`, through the
//! launcher): a bounded seed sweep of several scenarios with a determinism
//! check, and clear errors for a bad scenario. Longer sweeps:
//! `cargo run -p sim -- scenarios/<x>.toml --seeds 100`.

use std::path::Path;
use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .current_dir(&root)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn sweep(scenario: &str, seeds: &str) {
    let (code, stdout, stderr) =
        sim(&[scenario, "--seeds", seeds, "--check-determinism", "--quiet"]);
    assert_eq!(code, 0, "{scenario}: exit {code}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("all invariants held"),
        "{scenario}: {stdout}"
    );
    let runs = stdout.matches("SEED=").count();
    assert_eq!(runs.to_string(), seeds, "{scenario}: {stdout}");
}

#[test]
fn quickstart_three_seeds_deterministic() {
    sweep("scenarios/quickstart.toml", "3");
}

/// Runs side by side are independent runtimes: `--jobs` changes how long a
/// sweep takes, never what it finds.
#[test]
fn results_do_not_depend_on_how_many_runs_go_at_once() {
    let per_seed = |jobs: &str| {
        let (code, stdout, stderr) = sim(&[
            "scenarios/quickstart.toml",
            "--seeds",
            "3",
            "--jobs",
            jobs,
            "--quiet",
        ]);
        assert_eq!(code, 0, "--jobs {jobs}: exit {code}\n{stdout}\n{stderr}");
        let lines: Vec<String> = stderr
            .lines()
            .filter(|l| l.contains("] seed "))
            .map(str::to_owned)
            .collect();
        assert_eq!(lines.len(), 3, "--jobs {jobs}: {stderr}");
        lines
    };
    assert_eq!(per_seed("1"), per_seed("3"));
}

#[test]
fn crashes_gc_and_fan_in_sweep() {
    for s in [
        "scenarios/repeated-crashes.toml",
        "scenarios/gc-during-pushes.toml",
        "scenarios/shared-digest-fan-in.toml",
        "scenarios/legacy-crashes.toml",
    ] {
        sweep(s, "2");
    }
}

/// The GC delay contract (invariant 10) under client-like pushes, on both
/// layouts and every policy, through power cuts; and the check ran (a
/// contract checked against nothing would pass as well).
#[test]
fn gc_delay_contract_sweep() {
    sweep("scenarios/gc-delay-clients.toml", "2");
    let (code, stdout, stderr) = sim(&["scenarios/gc-delay-clients.toml", "--seed", "3"]);
    assert_eq!(code, 0, "exit {code}\n{stdout}\n{stderr}");
    let checked: Vec<u64> = stdout
        .lines()
        .filter(|l| l.starts_with("delay contract ("))
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(checked.len(), 6, "{stdout}");
    assert!(checked.iter().all(|n| *n >= 20), "{checked:?}\n{stdout}");
}

/// A disk that fills (invariant 11): writes refused cleanly, removals and
/// GC never refused, pushes acknowledged again after GC frees space, in the
/// same run; the summary shows the disk did fill and writes did resume.
#[test]
fn a_full_disk_recovers_through_gc_sweep() {
    sweep("scenarios/disk-full.toml", "2");
    let (code, stdout, stderr) = sim(&["scenarios/disk-full.toml", "--seed", "3"]);
    assert_eq!(code, 0, "exit {code}\n{stdout}\n{stderr}");
    let full: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("full disk ("))
        .collect();
    assert_eq!(
        full.len(),
        6,
        "every configuration filled its disk:\n{stdout}"
    );
}

#[test]
fn migrations_under_crashes_and_full_disks_sweep() {
    for s in [
        "scenarios/migration-crash-local.toml",
        "scenarios/migration-crash-object.toml",
        "scenarios/migration-disk-full.toml",
        "scenarios/migration-side-by-side.toml",
    ] {
        sweep(s, "3");
    }
}

#[test]
fn the_proposal_claims_hold() {
    // Each carries [[expect]] claims; a failed claim exits 4.
    for s in [
        "scenarios/independent-pushes.toml",
        "scenarios/hot-repo.toml",
    ] {
        let (code, stdout, stderr) = sim(&[s, "--quiet"]);
        assert_eq!(code, 0, "{s}: exit {code}\n{stdout}\n{stderr}");
        assert!(
            stdout.contains(" ok") && !stdout.contains("FAILED"),
            "{s}: {stdout}"
        );
    }
}

#[test]
fn a_bad_scenario_is_a_clear_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\n[workload]\nclients = 4\nrepoz = 3\n",
    )
    .unwrap();
    let (code, _, stderr) = sim(&[path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("line 4") && stderr.contains("repoz"),
        "{stderr}"
    );
    std::fs::write(&path, "name = \"bad\"\n[workload]\nclients = 0\n").unwrap();
    let (code, _, stderr) = sim(&[path.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("workload.clients (line 3)"), "{stderr}");
}
