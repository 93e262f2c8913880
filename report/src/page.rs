//! `reports/index.html`: one self-contained page (inline SVG, no scripts).
//! Every figure on it is read from this run's files; a section whose data
//! is missing says which command produces it instead of drawing nothing.

use std::fmt::Write as _;

use serde_json::Value;

use crate::charts;
use crate::inputs::Inputs;

/// The contention cases, in the proposal's order, with what each row asks.
pub const CASES: [(&str, &str); 7] = [
    (
        "different-repos",
        "Concurrent writes to different repos and blobs",
    ),
    ("same-digest", "Different repos, same digest"),
    ("read-while-writing", "Read in repo A while writing repo B"),
    ("tag-updates", "Tag updates in independent repos"),
    ("heavy-reads", "Heavy reads with light writes"),
    ("hot-repo", "One hot repo beside quiet ones"),
    ("fan-in", "Pathological shared-digest fan-in"),
];
pub const POLICIES: [&str; 3] = ["global", "split", "striped"];
pub const REPO_COUNTS: [u64; 4] = [1, 4, 16, 64];
/// The backend and repo count of the measured target.
pub const TARGET_BACKEND: &str = "object-1000us";
pub const TARGET_REPOS: u64 = 16;
pub const TARGET_RATIO: f64 = 8.0;

/// Where and how the figures were produced.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub machine: String,
    pub commit: String,
    pub date: String,
    pub command: String,
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How the page prints a figure (the render tests compare with it).
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub(crate) fn f(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Backends present in the criterion results, the target's first.
fn backends(inputs: &Inputs) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in &inputs.estimates {
        if let Some((case, backend)) = e.group.split_once('.')
            && CASES.iter().any(|(c, _)| *c == case)
            && !out.iter().any(|b| b == backend)
        {
            out.push(backend.to_owned());
        }
    }
    out.sort_by_key(|b| (b != TARGET_BACKEND, b.clone()));
    out
}

/// Operations per second of one contention point, from criterion.
pub fn throughput(
    inputs: &Inputs,
    case: &str,
    backend: &str,
    policy: &str,
    repos: u64,
) -> Option<f64> {
    inputs
        .estimate(
            &format!("{case}.{backend}"),
            policy,
            Some(&repos.to_string()),
        )?
        .per_sec()
}

/// `striped` over `global` throughput for the target point.
pub fn target_ratio(inputs: &Inputs) -> Option<f64> {
    let t = |p| throughput(inputs, "different-repos", TARGET_BACKEND, p, TARGET_REPOS);
    Some(t("striped")? / t("global")?)
}

pub(crate) fn missing(what: &str, command: &str) -> String {
    format!(
        "<p class=\"missing\">Not measured in this run: {} (<code>{}</code>).</p>",
        esc(what),
        esc(command)
    )
}

pub fn render(inputs: &Inputs, p: &Provenance) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>ocistore-lab: contention, dedupe, GC, migration</title>\
         <style>body{{font-family:sans-serif;max-width:1320px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         th{{background:#f0f0f0}}td:first-child,th:first-child{{text-align:left}}.ok{{color:#1a7f37}}.bad{{color:#c0392b;font-weight:bold}}\
         .missing{{color:#8a6d3b;background:#fcf8e3;padding:.5em}}.grid{{display:flex;flex-wrap:wrap;gap:8px}}code{{background:#f4f4f4}}</style>\
         </head><body><h1>ocistore-lab: the storage engine under contention</h1>\
         <p>Machine: {}<br>Commit: <code>{}</code><br>Date: {}<br>Regenerate: <code>{}</code></p>\
         <p>Benches run on tokio's multi-thread runtime against two backends: <code>object-1000us</code> is the object \
         driver in memory with 1&nbsp;ms injected per call (a remote store), <code>fs</code> is the fs driver on a temporary \
         directory with redb metadata (real fsyncs). A round is 16 concurrent clients doing two operations each; it ends when its slowest client \
         finishes, so in cases that mix pushes with pulls the pushing clients bound the round (the latency charts \
         show each class apart). Ratios compare points measured in the same run. The deterministic simulator's figures (virtual time) are at the end.</p>",
        esc(&p.machine),
        esc(&p.commit),
        esc(&p.date),
        esc(&p.command)
    );
    headline(&mut page, inputs);
    throughput_section(&mut page, inputs);
    latency_section(&mut page, inputs);
    locks_section(&mut page, inputs);
    calls_section(&mut page, inputs);
    gc_migration_section(&mut page, inputs);
    upload_section(&mut page, inputs);
    crate::serve::section(&mut page, inputs);
    crate::multi_instance::section(&mut page, inputs);
    sim_section(&mut page, inputs);
    if !inputs.problems.is_empty() {
        page.push_str("<h2>Unreadable inputs</h2><ul>");
        for problem in &inputs.problems {
            let _ = write!(page, "<li>{}</li>", esc(problem));
        }
        page.push_str("</ul>");
    }
    page.push_str("</body></html>\n");
    page
}

fn headline(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Target</h2>");
    match target_ratio(inputs) {
        Some(r) => {
            let (class, verdict) = if r >= TARGET_RATIO {
                ("ok", "met")
            } else {
                ("bad", "NOT met")
            };
            let _ = write!(
                page,
                "<p>16 clients on {TARGET_REPOS} repos, <code>{TARGET_BACKEND}</code>: <code>striped</code> pushes \
                 <b>{}×</b> the throughput of <code>global</code> (target ≥ {TARGET_RATIO}×): \
                 <span class=\"{class}\">{verdict}</span>.</p>",
                num(r)
            );
        }
        None => page.push_str(&missing(
            "the striped/global target point",
            "cargo bench -p engine --bench contention",
        )),
    }
    let backends = backends(inputs);
    if backends.is_empty() {
        return;
    }
    let _ = write!(
        page,
        "<table><tr><th>case at {TARGET_REPOS} repos (ops/s)</th><th>backend</th><th>global</th><th>split</th><th>striped</th>\
         <th>split ÷ global</th><th>striped ÷ global</th></tr>"
    );
    for backend in &backends {
        for (case, title) in CASES {
            let t: Vec<Option<f64>> = POLICIES
                .iter()
                .map(|p| throughput(inputs, case, backend, p, TARGET_REPOS))
                .collect();
            if t.iter().all(Option::is_none) {
                continue;
            }
            let cell = |v: Option<f64>| v.map_or("–".into(), num);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => format!("{}×", num(a / b)),
                _ => "–".into(),
            };
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(title),
                esc(backend),
                cell(t[0]),
                cell(t[1]),
                cell(t[2]),
                ratio(t[1], t[0]),
                ratio(t[2], t[0]),
            );
        }
    }
    page.push_str("</table>");
}

fn throughput_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Throughput against repository count, per lock policy</h2>");
    let backends = backends(inputs);
    if backends.is_empty() {
        page.push_str(&missing(
            "contention throughput",
            "cargo bench -p engine --bench contention",
        ));
        return;
    }
    for backend in &backends {
        let _ = write!(page, "<h3>{}</h3><div class=\"grid\">", esc(backend));
        for (case, title) in CASES {
            let series: Vec<(String, Vec<(f64, f64)>)> = POLICIES
                .iter()
                .map(|p| {
                    let points = REPO_COUNTS
                        .iter()
                        .filter_map(|&r| Some((r as f64, throughput(inputs, case, backend, p, r)?)))
                        .collect();
                    (p.to_string(), points)
                })
                .filter(|(_, pts): &(String, Vec<_>)| !pts.is_empty())
                .collect();
            if !series.is_empty() {
                page.push_str(&charts::lines(
                    title,
                    "repositories",
                    "ops/s",
                    true,
                    &series,
                ));
            }
        }
        page.push_str("</div>");
    }
}

/// Contention profile points (`contention.json`) matching a filter.
fn points<'a>(
    inputs: &'a Inputs,
    case: &'a str,
    repos: u64,
) -> impl Iterator<Item = &'a Value> + 'a {
    inputs
        .contention
        .as_ref()
        .and_then(|c| c["points"].as_array())
        .into_iter()
        .flatten()
        .filter(move |p| s(p, "case") == case && p["repos"].as_u64() == Some(repos))
}

fn latency_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Quiet repositories beside a hot one</h2>");
    let hot: Vec<&Value> = points(inputs, "hot-repo", TARGET_REPOS).collect();
    if hot.is_empty() {
        page.push_str(&missing(
            "hot-repo latency profiles",
            "cargo bench -p engine --bench contention",
        ));
    } else {
        page.push_str(
            "<p>Four clients push one hot repository while twelve pull from the others; the baseline is the same \
             pulls with the writers idle. Latencies are per operation (p99 of three rounds).</p><div class=\"grid\">",
        );
        let mut backends: Vec<&str> = hot.iter().map(|p| s(p, "backend")).collect();
        backends.dedup();
        for backend in backends {
            let of = |policy: &str, class: &str, q: &str| {
                hot.iter()
                    .find(|p| s(p, "backend") == backend && s(p, "policy") == policy)
                    .map_or(f64::NAN, |p| f(&p["latency"][class], q))
            };
            for q in ["p50_ms", "p99_ms"] {
                let series: Vec<(String, Vec<f64>)> = [
                    ("quiet pull, writers idle", "quiet-pull-baseline"),
                    ("quiet pull, hot repo written", "quiet-pull"),
                    ("hot push", "hot-push"),
                ]
                .iter()
                .map(|(label, class)| {
                    (
                        label.to_string(),
                        POLICIES.iter().map(|pol| of(pol, class, q)).collect(),
                    )
                })
                .collect();
                let groups: Vec<String> = POLICIES.iter().map(|p| p.to_string()).collect();
                page.push_str(&charts::grouped(
                    &format!("{backend}: {} latency", &q[..3]),
                    "ms",
                    &groups,
                    &series,
                ));
            }
        }
        page.push_str("</div>");
    }
}

fn locks_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Lock wait and hold per domain</h2>");
    let rows: Vec<&Value> = points(inputs, "different-repos", TARGET_REPOS).collect();
    if rows.is_empty() {
        page.push_str(&missing(
            "lock profiles",
            "cargo bench -p engine --bench contention",
        ));
        return;
    }
    page.push_str(
        "<p>Pushes of distinct images into 16 repositories (three profiled rounds). Wait is from asking to \
         holding; hold is the summed time held.</p><div class=\"grid\">",
    );
    let mut backends: Vec<&str> = rows.iter().map(|p| s(p, "backend")).collect();
    backends.dedup();
    for backend in backends {
        let mut labels: Vec<String> = Vec::new();
        for p in rows.iter().filter(|p| s(p, "backend") == backend) {
            for l in p["locks"].as_array().into_iter().flatten() {
                let label = format!("{} {}", s(l, "domain"), s(l, "mode"));
                if !labels.contains(&label) {
                    labels.push(label);
                }
            }
        }
        for (key, title) in [
            ("wait_p99_ms", "wait p99"),
            ("hold_total_ms", "hold, total"),
        ] {
            let series: Vec<(String, Vec<f64>)> = POLICIES
                .iter()
                .map(|pol| {
                    let p = rows
                        .iter()
                        .find(|p| s(p, "backend") == backend && s(p, "policy") == *pol);
                    let values = labels
                        .iter()
                        .map(|label| {
                            p.and_then(|p| p["locks"].as_array())
                                .into_iter()
                                .flatten()
                                .find(|l| format!("{} {}", s(l, "domain"), s(l, "mode")) == *label)
                                .map_or(0.0, |l| f(l, key))
                        })
                        .collect();
                    (pol.to_string(), values)
                })
                .collect();
            page.push_str(&charts::grouped(
                &format!("{backend}: {title}"),
                "ms",
                &labels,
                &series,
            ));
        }
    }
    page.push_str("</div>");
}

fn calls_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Driver calls per push: markers against markerless dedupe</h2>");
    match inputs.dedupe_calls.as_ref().and_then(Value::as_array) {
        Some(rows) => {
            let mut flows: Vec<String> = rows.iter().map(|r| s(r, "flow").to_owned()).collect();
            flows.dedup();
            // Rows before the S3 figures existed name no backend: the emulation.
            let backend_of = |r: &Value| match r["backend"].as_str() {
                Some(b) => b.to_owned(),
                None => "object (emulated)".to_owned(),
            };
            let mut backends: Vec<String> = rows.iter().map(backend_of).collect();
            backends.dedup();
            let series: Vec<(String, Vec<f64>)> = backends
                .iter()
                .flat_map(|b| ["legacy", "blobstore"].map(|layout| (b.clone(), layout)))
                .map(|(backend, layout)| {
                    let v = flows
                        .iter()
                        .map(|fl| {
                            rows.iter()
                                .find(|r| {
                                    s(r, "flow") == fl
                                        && s(r, "layout") == layout
                                        && backend_of(r) == backend
                                })
                                .map_or(f64::NAN, |r| f(r, "calls"))
                        })
                        .collect();
                    (format!("{layout}, {backend}"), v)
                })
                .collect();
            page.push_str(
                "<p>Backend calls to push a 5-layer image already stored in another repository \
                 (counted, not timed, so exact): on the <code>object</code> driver (the emulation), and on the \
                 <code>s3</code> driver against a real S3 API (moto), where the HTTP requests the server \
                 received (its recorder) are counted independently of the driver wrapper. Legacy writes 0-byte markers; \
                 blobstore writes none.</p>",
            );
            page.push_str(&charts::grouped(
                "calls to push an already-stored image",
                "driver calls",
                &flows,
                &series,
            ));
            page.push_str(
                "<table><tr><th>backend</th><th>flow</th><th>layout</th><th>driver calls</th>\
                 <th>HTTP requests the server received</th><th>markers</th></tr>",
            );
            for r in rows {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&backend_of(r)),
                    esc(s(r, "flow")),
                    esc(s(r, "layout")),
                    num(f(r, "calls")),
                    num(f(r, "server_requests")),
                    num(f(r, "markers"))
                );
            }
            page.push_str("</table>");
        }
        None => page.push_str(&missing(
            "dedupe calls",
            "cargo bench -p engine --bench dedupe_calls",
        )),
    }
    let flows = ["monolithic", "chunked"];
    let timed: Vec<(String, Vec<f64>)> = ["legacy", "blobstore"]
        .iter()
        .map(|layout| {
            let ms = flows
                .iter()
                .map(|flow| {
                    inputs
                        .estimate(
                            &format!("dedupe-push-{flow}.{TARGET_BACKEND}"),
                            "striped",
                            Some(layout),
                        )
                        .map_or(f64::NAN, |e| e.mean_ns / 1e6)
                })
                .collect();
            (layout.to_string(), ms)
        })
        .collect();
    if timed.iter().any(|(_, v)| v.iter().any(|x| x.is_finite())) {
        page.push_str(&charts::grouped(
            "the same push timed (criterion, striped, 1 ms per call)",
            "ms per push",
            &flows.map(String::from),
            &timed,
        ));
    }
    let per_case: Vec<(String, f64)> = CASES
        .iter()
        .filter_map(|(case, _)| {
            let p = points(inputs, case, TARGET_REPOS).find(|p| s(p, "policy") == "striped")?;
            Some((case.to_string(), f(p, "calls_per_op")))
        })
        .collect();
    if !per_case.is_empty() {
        page.push_str(&charts::bars(
            "driver calls per operation, by case (striped, 16 repos)",
            "calls / op",
            &per_case,
        ));
    }
}

/// Throughput points (parameter, per second) of each function of one
/// criterion group; functions with no points are left out.
fn criterion_series(
    inputs: &Inputs,
    group: &str,
    functions: &[&str],
) -> Vec<(String, Vec<(f64, f64)>)> {
    functions
        .iter()
        .map(|func| {
            let mut pts: Vec<(f64, f64)> = inputs
                .estimates
                .iter()
                .filter(|e| e.group == group && e.function == *func)
                .filter_map(|e| Some((e.value.as_deref()?.parse().ok()?, e.per_sec()?)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (func.to_string(), pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect()
}

fn gc_migration_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>GC and migration at scale</h2>");
    match &inputs.gc {
        Some(gc) => {
            let passes = gc["passes"].as_array().cloned().unwrap_or_default();
            let series: Vec<(String, Vec<(f64, f64)>)> = POLICIES
                .iter()
                .map(|pol| {
                    // Passes right after the build ("warm"; older results
                    // have no cache field and were measured that way).
                    let pts = passes
                        .iter()
                        .filter(|p| s(p, "policy") == *pol && s(p, "cache") != "cold")
                        .map(|p| (f(p, "manifests"), f(p, "pass_ms")))
                        .collect();
                    (pol.to_string(), pts)
                })
                .filter(|(_, pts): &(String, Vec<_>)| !pts.is_empty())
                .collect();
            page.push_str("<div class=\"grid\">");
            page.push_str(&charts::lines(
                "GC pass over one repository (median of runs)",
                "manifests",
                "ms",
                false,
                &series,
            ));
            let dry_runs = criterion_series(inputs, "gc-dry-run.object", &POLICIES);
            if !dry_runs.is_empty() {
                page.push_str(&charts::lines(
                    "GC dry-run pass (criterion): manifests scanned per second",
                    "manifests",
                    "manifests / s",
                    false,
                    &dry_runs,
                ));
            }
            page.push_str("</div>");
            let (from, to) = (
                gc["ratio_of"][0].as_f64().unwrap_or(f64::NAN),
                gc["ratio_of"][1].as_f64().unwrap_or(f64::NAN),
            );
            let _ = write!(
                page,
                "<p>First pass under <code>striped</code>: {}× the manifests ({} → {}) took <b>{}×</b> the time \
                 (target ≤ 1.2 × {}) right after the build, and <b>{}×</b> with the CPU caches cold \
                 (64 MiB of other memory touched between build and pass, as for a pass that runs long after \
                 the pushes). Blobstore-exclusive acquisitions during GC: {}. Push p99 in other \
                 repositories with GC running: {} ms against {} ms without ({}×, target ≤ 1.5×).</p>",
                num(to / from),
                num(from),
                num(to),
                num(f(gc, "ratio")),
                num(to / from),
                num(f(gc, "cold_ratio")),
                num(f(&gc["pushes"], "blobstore_exclusive")),
                num(f(&gc["pushes"], "busy_p99_ms")),
                num(f(&gc["pushes"], "quiet_p99_ms")),
                num(f(&gc["pushes"], "ratio")),
            );
        }
        None => page.push_str(&missing(
            "GC scaling",
            "cargo bench -p engine --bench gc_scaling",
        )),
    }
    let migrations: Vec<(String, Vec<(f64, f64)>)> = [
        ("local", "local (hard links)"),
        ("object", "object (markers)"),
    ]
    .iter()
    .flat_map(|(b, label)| {
        criterion_series(inputs, &format!("migration.{b}"), &["in-place"])
            .into_iter()
            .map(|(_, pts)| (label.to_string(), pts))
    })
    .collect();
    if !migrations.is_empty() {
        page.push_str(&charts::lines(
            "in-place migration (criterion): repository blobs per second",
            "repositories",
            "blobs / s",
            true,
            &migrations,
        ));
    }
    match inputs.migration.as_ref().and_then(|m| m["runs"].as_array()) {
        Some(runs) => {
            page.push_str(
                "<table><tr><th>migration</th><th>repos</th><th>repository blobs</th><th>seconds</th>\
                 <th>blobs/s</th><th>bytes copied</th><th>unique bytes</th><th>driver calls</th>\
                 <th>HTTP requests the server received</th></tr>",
            );
            for r in runs {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(s(r, "backend")),
                    num(f(r, "repos")),
                    num(f(r, "blobs")),
                    num(f(r, "secs")),
                    num(f(r, "blobs_per_sec")),
                    num(f(r, "bytes_copied")),
                    num(f(r, "unique_bytes")),
                    num(f(r, "calls")),
                    num(f(r, "server_requests")),
                );
            }
            page.push_str("</table>");
        }
        None => page.push_str(&missing(
            "migration",
            "cargo bench -p engine --bench migration",
        )),
    }
}

fn upload_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Blob upload against the machine's own limits</h2>");
    let Some(u) = &inputs.upload else {
        page.push_str(&missing(
            "upload throughput",
            "cargo bench -p engine --bench upload",
        ));
        return;
    };
    let rows = vec![
        ("sha256 alone".to_owned(), f(u, "sha256_mibps")),
        ("write + fsync alone".to_owned(), f(u, "write_fsync_mibps")),
        ("fs driver, sha256 + fsync".to_owned(), f(u, "driver_mibps")),
    ];
    page.push_str(&charts::bars(
        &format!("streaming a {} MiB blob", num(f(u, "mib"))),
        "MiB/s",
        &rows,
    ));
    let ratio = f(u, "ratio");
    let _ = write!(
        page,
        "<p>Driver throughput ÷ the slower baseline: <b class=\"{}\">{}</b> (target ≥ 0.8). \
         Peak extra heap of one upload: {} MiB (target ≤ 16).</p>",
        if ratio >= 0.8 { "ok" } else { "bad" },
        num(ratio),
        num(f(u, "peak_heap_mib"))
    );
}

fn sim_section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Simulator (virtual time, deterministic)</h2>");
    if inputs.sim.is_empty() {
        page.push_str(&missing(
            "simulator runs",
            "cargo run -p sim -- scenarios/<x>.toml --json target/ocistore-bench/sim/<x>.json",
        ));
        return;
    }
    page.push_str(
        "<table><tr><th>scenario</th><th>layout</th><th>policy</th><th>seed</th><th>ops / virtual s</th>\
         <th>p99 by class (ms)</th><th>calls / op</th><th>violations</th></tr>",
    );
    for r in &inputs.sim {
        let p99: Vec<String> = r["latency"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k} {}", num(f(v, "p99_ms"))))
            .collect();
        let violations = r["violations"].as_array().map_or(0, Vec::len);
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(s(r, "scenario")),
            esc(s(r, "layout")),
            esc(s(r, "policy")),
            r["seed"].as_u64().unwrap_or(0),
            num(f(r, "throughput")),
            esc(&p99.join(", ")),
            num(f(r, "calls_per_op")),
            if violations == 0 { "ok" } else { "bad" },
            violations
        );
    }
    page.push_str("</table>");
}
