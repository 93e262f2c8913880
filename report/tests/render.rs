//! The generator on a real small run: `tests/fixtures/quick-run` holds the
//! criterion estimates and JSON that `scripts/bench-report --quick` wrote
//! (criterion's `new/benchmark.json` and `new/estimates.json` only). This is
//! CI's check of the report; the full run is `scripts/bench-report`.

use std::path::{Path, PathBuf};

use report::inputs::Inputs;
use report::page::{self, Provenance, num};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quick-run")
}

fn load() -> Inputs {
    Inputs::load(&fixture().join("criterion"), &fixture().join("results"))
}

fn blank_provenance() -> Provenance {
    Provenance {
        machine: String::new(),
        commit: String::new(),
        date: String::new(),
        command: String::new(),
    }
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
        ("serve", &inputs.serve),
        ("multi_instance", &inputs.multi_instance),
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
        "against CNCF distribution 2.8.2 over HTTP",
        "Several instances over one store",
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
    assert!(html.contains("cargo bench -p e2e --bench serve"));
    assert!(report::serve::push_ratio(&inputs).is_none());
    assert!(html.contains("cargo bench -p ocistore --bench multi_instance"));
    assert!(report::multi_instance::lost_tags(&inputs, report::multi_instance::SHARED).is_none());
}

/// A figure of `serve.json` read straight from the fixture.
fn serve_figure(server: &str, clients: u64, phase: &str, key: &str) -> f64 {
    let path = fixture().join("results/serve.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let level = v["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == server)
        .unwrap()["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["clients"] == clients)
        .unwrap()
        .clone();
    level[phase][key].as_f64().unwrap()
}

#[test]
fn serve_targets_are_judged_from_the_measured_figures() {
    let inputs = load();
    let expected = serve_figure("ocistore-striped", 16, "push", "mb_per_s")
        / serve_figure("distribution-2.8.2", 16, "push", "mb_per_s");
    let got = report::serve::push_ratio(&inputs).unwrap();
    assert!(
        (got - expected).abs() < 1e-9 * expected,
        "{got} vs {expected}"
    );
    let (concurrent, sequential) =
        report::serve::concurrent_and_sequential(&inputs, "ocistore-striped").unwrap();
    assert_eq!(
        concurrent,
        serve_figure("ocistore-striped", 16, "push", "seconds")
    );
    assert_eq!(
        sequential,
        serve_figure("ocistore-striped", 1, "push", "seconds")
    );
    let html = page::render(&inputs, &blank_provenance());
    let section = &html[html.find("against CNCF distribution").unwrap()..];
    let ratio_verdict = if got >= report::serve::PUSH_RATIO_TARGET {
        "met"
    } else {
        "NOT met"
    };
    assert!(
        section.contains(&format!(
            "(target ≥ 2×): <span class=\"{}\">{ratio_verdict}</span>",
            if got >= 2.0 { "ok" } else { "bad" }
        )),
        "push ratio verdict"
    );
    // The quick run's blob is smaller than 1 GiB: the RSS target is not judged.
    let (bytes, _) = report::serve::big_blob_extra_rss(&inputs, "ocistore-striped").unwrap();
    assert!(bytes < 1 << 30);
    assert!(section.contains("not judged: this run's blob is 64.0 MiB"));
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

/// `multi_instance.json` read straight from the fixture.
fn multi_instance_fixture() -> serde_json::Value {
    let path = fixture().join("results/multi_instance.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn multi_instance_shows_lost_tags_per_mode_and_throughput_per_instance_count() {
    let inputs = load();
    let v = multi_instance_fixture();
    let modes = v["lost_tags"]["modes"].as_array().unwrap();
    for mode in [
        report::multi_instance::UNSAFE,
        report::multi_instance::SHARED,
    ] {
        let m = modes.iter().find(|m| m["mode"] == mode).unwrap();
        let runs = m["runs"].as_array().unwrap();
        let sum = |key: &str| runs.iter().map(|r| r[key].as_u64().unwrap()).sum::<u64>();
        assert_eq!(
            report::multi_instance::lost_tags(&inputs, mode),
            Some((sum("acknowledged"), sum("lost"), runs.len())),
            "{mode}"
        );
    }
    let html = page::render(&inputs, &blank_provenance());
    let section = &html[html.find("Several instances over one store").unwrap()..];
    let section = &section[..section.find("<h2>").unwrap_or(section.len())];
    // One row per configuration, each with its measured images/s and p99,
    // and the label that says what the figures cannot show.
    for c in v["throughput"]["configs"].as_array().unwrap() {
        let push = &c["push"];
        let row = format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            c["name"].as_str().unwrap().replace('<', "&lt;"),
            c["instances"],
            num(push["images_per_s"].as_f64().unwrap()),
        );
        assert!(section.contains(&row), "missing row {row}");
        assert!(section.contains(&num(push["p99_ms"].as_f64().unwrap())));
    }
    assert_eq!(v["throughput"]["configs"].as_array().unwrap().len(), 4);
    assert!(section.contains("not how the service scales out"));
}
