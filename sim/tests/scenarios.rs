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
        "scenarios/tag-races.toml",
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
    // Every planned stop is delivered: a planned crash that never happens
    // would make the sweep prove less than it says.
    for (s, planned) in [
        ("scenarios/migration-crash-local.toml", 6),
        ("scenarios/migration-crash-object.toml", 7),
        ("scenarios/migration-disk-full.toml", 3),
    ] {
        let (code, stdout, stderr) = sim(&[s, "--seed", "4"]);
        assert_eq!(code, 0, "{s}: exit {code}\n{stdout}\n{stderr}");
        let line = stdout
            .lines()
            .find(|l| l.starts_with("migration (in_place)"))
            .unwrap_or_else(|| panic!("{s}: no migration line\n{stdout}"));
        let number = |before: &str| -> u64 {
            let head = line.split(before).next().unwrap();
            head.rsplit(' ')
                .find(|w| !w.is_empty())
                .unwrap()
                .parse()
                .unwrap()
        };
        let delivered = number(" crash(es)") + number(" full-disk stop(s)");
        assert_eq!(delivered, planned, "{s}: {line}");
        assert!(
            line.contains(&format!("of {planned} planned")),
            "{s}: {line}"
        );
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

/// Scenarios swept by the tests above (with more seeds, or with claims).
const SWEPT_ABOVE: [&str; 14] = [
    "quickstart",
    "tag-races",
    "repeated-crashes",
    "gc-during-pushes",
    "shared-digest-fan-in",
    "legacy-crashes",
    "gc-delay-clients",
    "disk-full",
    "migration-crash-local",
    "migration-crash-object",
    "migration-disk-full",
    "migration-side-by-side",
    "independent-pushes",
    "hot-repo",
];

/// Every scenario in scenarios/ runs clean for at least one seed in the
/// test command: those not swept above run here, and a new scenario that
/// is in neither list fails this test until it is.
#[test]
fn every_scenario_runs_clean_for_one_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".toml").map(str::to_owned)
        })
        .collect();
    names.sort();
    let rest: Vec<&String> = names
        .iter()
        .filter(|n| !SWEPT_ABOVE.contains(&n.as_str()))
        .collect();
    for name in SWEPT_ABOVE {
        assert!(
            names.iter().any(|n| n == name),
            "{name} is swept but missing"
        );
    }
    for name in &rest {
        let file = format!("scenarios/{name}.toml");
        let (code, stdout, stderr) = sim(&[&file, "--quiet"]);
        assert_eq!(code, 0, "{file}: exit {code}\n{stdout}\n{stderr}");
        assert!(stdout.contains("all invariants held"), "{file}: {stdout}");
    }
    assert!(rest.len() >= 6, "{rest:?}");
}

/// The checker against deliberately broken stores (sim/src/broken.rs):
/// each must fail the run, with the invariant it breaks named. The
/// quickstart, striped only, with `[faults] broken = "..."`.
#[test]
fn broken_stores_are_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let quickstart = std::fs::read_to_string(root.join("scenarios/quickstart.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (broken, report) in [
        ("refuse_manifests", "fewer than the scenario's minimum"),
        ("stale_tags", "(invariant 1"),
        ("drop_blobs", "(invariant 1"),
        ("wrong_bytes", "(invariant 1"),
        ("not_durable", "after the crash at 1.100s"),
    ] {
        let text = quickstart.replacen(
            "[faults]\n",
            &format!("[faults]\nbroken = \"{broken}\"\n"),
            1,
        );
        assert_ne!(text, quickstart, "quickstart has a [faults] table");
        let path = dir.path().join(format!("{broken}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, stdout, stderr) =
            sim(&[path.to_str().unwrap(), "--policy", "striped", "--quiet"]);
        assert_eq!(
            code, 1,
            "{broken}: a broken store passed\n{stdout}\n{stderr}"
        );
        assert!(
            stderr.contains(report),
            "{broken}: no {report:?} in\n{stderr}"
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
