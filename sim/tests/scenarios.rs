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
/// Twelve seeds (72 runs, about a CPU-second): two used to miss that
/// seeds 4 and 5 wedged the store (GC aborted on its own index rewrite,
/// the reserve never came back). What remains is rarer (4 of 1,800 runs
/// at bec7f27, seeds 48, 117, 186, 294: a tag delete whose released
/// reserve a write on another repository took: the README's "full disks" row).
#[test]
fn a_full_disk_recovers_through_gc_sweep() {
    sweep("scenarios/disk-full.toml", "12");
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
const SWEPT_ABOVE: [&str; 16] = [
    "quickstart",
    "several-instances",
    "several-instances-stale-lease",
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

/// Corrupted reads (and writes torn inside a file): every configuration
/// got flipped reads, and the store refused every one of them.
/// A store that skips read verification under the same faults is caught
/// serving wrong bytes (invariant 6).
#[test]
fn corrupted_reads_are_refused_and_a_store_that_serves_them_is_caught() {
    sweep("scenarios/corrupt-reads.toml", "2");
    let (code, stdout, stderr) = sim(&["scenarios/corrupt-reads.toml", "--seed", "3"]);
    assert_eq!(code, 0, "exit {code}\n{stdout}\n{stderr}");
    let faulted = stdout
        .lines()
        .filter(|l| l.starts_with("disk faults ("))
        .filter(|l| !l.contains(" 0 reads"))
        .count();
    assert_eq!(
        faulted, 3,
        "every configuration got flipped reads:\n{stdout}"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("scenarios/corrupt-reads.toml")).unwrap();
    let broken = text.replacen("[faults]\n", "[faults]\nbroken = \"unverified_reads\"\n", 1);
    assert_ne!(broken, text, "corrupt-reads has a [faults] table");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unverified.toml");
    std::fs::write(&path, broken).unwrap();
    let (code, stdout, stderr) = sim(&[path.to_str().unwrap(), "--policy", "striped", "--quiet"]);
    assert_eq!(
        code, 1,
        "a store serving corrupted reads passed\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("served wrong bytes (invariant 6)"),
        "no invariant 6 violation in\n{stderr}"
    );
}

/// `scenarios/<name>.toml` with `line` added to its `[instances]` table.
fn instances_variant(dir: &Path, name: &str, line: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join(format!("scenarios/{name}.toml"))).unwrap();
    let variant = text.replacen("[instances]\n", &format!("[instances]\n{line}\n"), 1);
    assert_ne!(variant, text, "{name} has an [instances] table");
    let path = dir.join(format!("{name}-variant.toml"));
    std::fs::write(&path, variant).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Sums each figure of the several-instances line over the runs of
/// `seeds` (`--seeds N`, or `--seed N`).
fn fences(scenario: &str, seeds: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("runs.json");
    let mut args = vec![scenario, "--quiet", "--json", json.to_str().unwrap()];
    args.extend(seeds);
    let (code, stdout, stderr) = sim(&args);
    assert_eq!(code, 0, "{scenario}: exit {code}\n{stdout}\n{stderr}");
    let runs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let mut sums = serde_json::Map::new();
    for run in &runs {
        for (k, v) in run["cluster"].as_object().expect("a cluster run") {
            let sum = sums.get(k).and_then(|s| s.as_u64()).unwrap_or(0);
            sums.insert(k.clone(), (sum + v.as_u64().unwrap()).into());
        }
    }
    sums
}

/// Several instances (DESIGN §15, invariant 13) as madsim nodes, the
/// metadata and locks on a service node over the network, under crashes,
/// pauses, partitions, stalled index.json writes and a service restart:
/// ten seeds lose nothing and replay identically (a run costs a fraction
/// of a CPU-second), and the faults reached the fences: sessions ended,
/// index.json swaps refused. With in-process locks only (zot's scale-out,
/// #4337), seed 1 loses acknowledged tags; so does an object store that
/// ignores the swaps' conditions once a write stalls past its lock (in
/// the first twenty seeds).
#[test]
fn several_instances_lose_nothing_and_each_fence_is_needed() {
    let scenario = "scenarios/several-instances.toml";
    sweep(scenario, "10");
    let sums = fences(scenario, &["--seeds", "10"]);
    for figure in ["sessions_ended", "swaps_refused"] {
        assert!(
            sums[figure].as_u64().unwrap() > 0,
            "no {figure} in 10 seeds: {sums:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // In-process locks lose tags at every seed of 200 seen; ignored
    // conditions at 41 of 200 (a stall must land on a contended write),
    // five of them in the first twenty.
    for (line, seeds, what) in [
        ("shared = \"in_process_locks\"", "1", "in-process locks"),
        (
            "ignore_swap_conditions = true",
            "20",
            "ignored swap conditions",
        ),
    ] {
        let path = instances_variant(dir.path(), "several-instances", line);
        let (code, stdout, stderr) = sim(&[&path, "--seeds", seeds, "--quiet"]);
        assert_eq!(code, 1, "{what} lost nothing\n{stdout}\n{stderr}");
        assert!(
            stderr.contains("(invariant 1/2)") || stderr.contains("(invariant 2)"),
            "{what}: no lost or wrong acknowledged tag in\n{stderr}"
        );
    }
}

/// The sweeper paused past its lease but not its lock session: ten seeds
/// lose nothing. The takeover it is about needs another instance's GC to
/// reach its sweep during the pause (the paused instance's clients often
/// hold repository locks it waits for): 7 of 200 seeds, where the woken
/// sweeper's write is refused by the newer epoch. No single seed is pinned
/// (any change to the engine's calls moves them): 200 seeds, about 3
/// CPU-seconds, must fence at least one write.
#[test]
fn a_paused_sweeper_is_fenced_by_the_lease_epoch() {
    let scenario = "scenarios/several-instances-stale-lease.toml";
    sweep(scenario, "10");
    let sums = fences(scenario, &["--seeds", "200"]);
    assert!(
        sums["fenced_writes"].as_u64().unwrap() > 0,
        "no fenced write in 200 seeds: {sums:?}"
    );
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
