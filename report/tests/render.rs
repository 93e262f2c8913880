//! The generator on a real small run: `tests/fixtures/quick-run` holds the
//! criterion estimates and JSON that `scripts/bench-report --quick` wrote
//! (criterion's `new/benchmark.json` and `new/estimates.json` only). This is
//! CI's check of the report; the full run is `scripts/bench-report`.

use std::path::{Path, PathBuf};

use report::inputs::Inputs;
use report::page::{self, Provenance};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quick-run")
}

fn load() -> Inputs {
    Inputs::load(&fixture().join("criterion"), &fixture().join("results"))
}

/// A criterion mean read straight from the fixture, not through the crate.
fn mean_ns(bench: &str) -> f64 {
    let path = fixture()
        .join("criterion")
        .join(bench)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["mean"]["point_estimate"].as_f64().unwrap()
}

#[test]
fn reads_every_input_of_the_run() {
    let inputs = load();
    assert!(inputs.problems.is_empty(), "{:?}", inputs.problems);
    // 7 cases x 3 policies, 3 upload baselines, 2 GC sizes x 3 policies, 2 migrations.
    assert_eq!(inputs.estimates.len(), 21 + 3 + 6 + 2);
    for (name, v) in [
        ("contention", &inputs.contention),
        ("dedupe_calls", &inputs.dedupe_calls),
        ("gc", &inputs.gc),
        ("migration", &inputs.migration),
        ("upload", &inputs.upload),
    ] {
        assert!(v.is_some(), "{name} not read");
    }
    assert_eq!(inputs.sim.len(), 3, "quickstart runs its three policies");
}

#[test]
fn target_ratio_is_the_two_measured_means() {
    let inputs = load();
    // Same elements per iteration, so throughput ratio = inverse time ratio.
    let expected = mean_ns("different-repos.object-1000us/global/16")
        / mean_ns("different-repos.object-1000us/striped/16");
    let got = page::target_ratio(&inputs).unwrap();
    assert!(
        (got - expected).abs() < 1e-9 * expected,
        "{got} vs {expected}"
    );
}

#[test]
fn page_has_every_section_its_provenance_and_no_gaps() {
    let provenance = Provenance {
        machine: "test <machine>".into(),
        commit: "abc123".into(),
        date: "2026-11-29T00:00:00Z".into(),
        command: "scripts/bench-report --quick".into(),
    };
    let html = page::render(&load(), &provenance);
    for heading in [
        "Target",
        "Throughput against repository count",
        "Quiet repositories beside a hot one",
        "Lock wait and hold per domain",
        "Driver calls per push",
        "GC and migration at scale",
        "Blob upload against the machine",
        "Simulator",
    ] {
        assert!(html.contains(heading), "missing section {heading:?}");
    }
    assert!(!html.contains("Not measured"), "a section had no data");
    assert!(!html.contains("Unreadable inputs"));
    assert!(
        html.contains("test &lt;machine&gt;"),
        "provenance not escaped"
    );
    assert!(html.contains("abc123") && html.contains("scripts/bench-report --quick"));
    // Seven throughput charts, two latency, two lock, two calls, GC pass and
    // dry run, migration, upload.
    assert!(
        html.matches("<svg").count() >= 17,
        "{} charts",
        html.matches("<svg").count()
    );
    let ratio = page::target_ratio(&load()).unwrap();
    assert!(
        html.contains(&format!("<b>{ratio:.1}×</b>"))
            || html.contains(&format!("<b>{ratio:.2}×</b>"))
    );
}

#[test]
fn a_missing_run_says_what_to_run() {
    let empty = tempfile::tempdir().unwrap();
    let inputs = Inputs::load(
        &empty.path().join("criterion"),
        &empty.path().join("results"),
    );
    let provenance = Provenance {
        machine: String::new(),
        commit: String::new(),
        date: String::new(),
        command: String::new(),
    };
    let html = page::render(&inputs, &provenance);
    assert!(html.contains("cargo bench -p engine --bench contention"));
    assert!(html.contains("cargo bench -p engine --bench gc_scaling"));
    assert!(page::target_ratio(&inputs).is_none());
}

#[test]
fn the_binary_writes_the_page() {
    let out = tempfile::tempdir().unwrap();
    let page = out.path().join("sub/index.html");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_report"))
        .arg("--criterion")
        .arg(fixture().join("criterion"))
        .arg("--results")
        .arg(fixture().join("results"))
        .arg("--out")
        .arg(&page)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("target: striped/global"), "{stdout}");
    assert!(
        std::fs::read_to_string(&page)
            .unwrap()
            .starts_with("<!doctype html>")
    );
}
