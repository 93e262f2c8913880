//! What the report reads: criterion's estimates (one `new/` directory per
//! benchmark), the benches' own JSON in `target/ocistore-bench/`, and the
//! simulator's `--json` output in `target/ocistore-bench/sim/`.
//!
//! Every file is treated as untrusted: one that cannot be read or parsed
//! becomes a line in [`Inputs::problems`], printed on the page, and the rest
//! of the report is still written.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One criterion benchmark's mean time per iteration, as it estimated it.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub group: String,
    pub function: String,
    /// The parameter (`BenchmarkId::new(_, value)`), if any.
    pub value: Option<String>,
    pub mean_ns: f64,
    pub lower_ns: f64,
    pub upper_ns: f64,
    pub throughput: Option<Throughput>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub enum Throughput {
    Elements(u64),
    Bytes(u64),
    BytesDecimal(u64),
}

impl Estimate {
    /// Elements or bytes per second, when the bench declared a throughput.
    pub fn per_sec(&self) -> Option<f64> {
        let n = match self.throughput? {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
        };
        (self.mean_ns > 0.0).then(|| n as f64 / (self.mean_ns / 1e9))
    }
}

#[derive(Debug, Deserialize)]
struct BenchmarkJson {
    group_id: String,
    function_id: Option<String>,
    value_str: Option<String>,
    throughput: Option<Throughput>,
}

#[derive(Debug, Deserialize)]
struct Interval {
    lower_bound: f64,
    upper_bound: f64,
}

#[derive(Debug, Deserialize)]
struct PointEstimate {
    point_estimate: f64,
    confidence_interval: Interval,
}

#[derive(Debug, Deserialize)]
struct EstimatesJson {
    mean: PointEstimate,
}

/// Everything one report is drawn from.
#[derive(Debug, Default)]
pub struct Inputs {
    pub estimates: Vec<Estimate>,
    /// `contention.json`: per-point latency, lock and call profiles.
    pub contention: Option<Value>,
    pub dedupe_calls: Option<Value>,
    pub gc: Option<Value>,
    pub migration: Option<Value>,
    pub upload: Option<Value>,
    /// `serve.json`: `ocistore serve` and CNCF distribution over HTTP.
    pub serve: Option<Value>,
    /// `multi_instance.json`: several `serve` processes over one store.
    pub multi_instance: Option<Value>,
    /// The simulator's runs (each file holds an array of results).
    pub sim: Vec<Value>,
    pub problems: Vec<String>,
}

impl Inputs {
    pub fn load(criterion: &Path, results: &Path) -> Inputs {
        let mut inputs = Inputs::default();
        let mut dirs = Vec::new();
        find_new_dirs(criterion, &mut dirs, 0);
        dirs.sort();
        for dir in dirs {
            match read_estimate(&dir) {
                Ok(e) => inputs.estimates.push(e),
                Err(e) => inputs.problems.push(format!("{}: {e}", dir.display())),
            }
        }
        let mut json = |name: &str| -> Option<Value> {
            let path = results.join(format!("{name}.json"));
            if !path.exists() {
                return None;
            }
            match read_json(&path) {
                Ok(v) => Some(v),
                Err(e) => {
                    inputs.problems.push(e);
                    None
                }
            }
        };
        inputs.contention = json("contention");
        inputs.dedupe_calls = json("dedupe_calls");
        inputs.gc = json("gc_scaling");
        inputs.migration = json("migration");
        inputs.upload = json("upload");
        inputs.serve = json("serve");
        inputs.multi_instance = json("multi_instance");
        let sim_dir = results.join("sim");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&sim_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            match read_json(&path) {
                Ok(Value::Array(runs)) => inputs.sim.extend(runs),
                Ok(_) => inputs
                    .problems
                    .push(format!("{}: expected an array of runs", path.display())),
                Err(e) => inputs.problems.push(e),
            }
        }
        inputs
    }

    /// The estimate of `group/function[/value]`.
    pub fn estimate(&self, group: &str, function: &str, value: Option<&str>) -> Option<&Estimate> {
        self.estimates
            .iter()
            .find(|e| e.group == group && e.function == function && e.value.as_deref() == value)
    }
}

/// Criterion keeps `<bench>/new/` (this run), `base/` and `change/`; only
/// `new/` holds this run's figures. Depth is bounded against link loops.
fn find_new_dirs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if path.join("benchmark.json").exists() {
                out.push(path);
            }
        } else if path.file_name().is_none_or(|n| n != "report") {
            find_new_dirs(&path, out, depth + 1);
        }
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_estimate(dir: &Path) -> Result<Estimate, String> {
    let bench: BenchmarkJson = serde_json::from_value(read_json(&dir.join("benchmark.json"))?)
        .map_err(|e| format!("benchmark.json: {e}"))?;
    let est: EstimatesJson = serde_json::from_value(read_json(&dir.join("estimates.json"))?)
        .map_err(|e| format!("estimates.json: {e}"))?;
    let mean = est.mean;
    if !(mean.point_estimate.is_finite() && mean.point_estimate > 0.0) {
        return Err(format!(
            "mean {} is not a positive time",
            mean.point_estimate
        ));
    }
    Ok(Estimate {
        group: bench.group_id,
        function: bench.function_id.unwrap_or_default(),
        value: bench.value_str,
        mean_ns: mean.point_estimate,
        lower_ns: mean.confidence_interval.lower_bound,
        upper_ns: mean.confidence_interval.upper_bound,
        throughput: bench.throughput,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_new_estimates_and_reports_broken_files() {
        let dir = tempfile::tempdir().unwrap();
        let crit = dir.path().join("criterion");
        let ok = crit.join("g/striped/16/new");
        write(
            &ok.join("benchmark.json"),
            r#"{"group_id":"g","function_id":"striped","value_str":"16","throughput":{"Elements":32}}"#,
        );
        write(
            &ok.join("estimates.json"),
            r#"{"mean":{"point_estimate":2e9,"confidence_interval":{"lower_bound":1.9e9,"upper_bound":2.1e9}}}"#,
        );
        // The previous run's copy must not be read as a second benchmark.
        write(&crit.join("g/striped/16/base/benchmark.json"), "{}");
        let bad = crit.join("g/global/16/new");
        write(
            &bad.join("benchmark.json"),
            r#"{"group_id":"g","function_id":"global"}"#,
        );
        write(&bad.join("estimates.json"), "not json");
        let results = dir.path().join("results");
        write(&results.join("gc_scaling.json"), "{ truncated");
        write(&results.join("sim/a.json"), r#"[{"scenario":"x"}]"#);

        let inputs = Inputs::load(&crit, &results);
        assert_eq!(inputs.estimates.len(), 1);
        let e = inputs.estimate("g", "striped", Some("16")).unwrap();
        assert_eq!(e.per_sec(), Some(16.0));
        assert!(inputs.gc.is_none());
        assert_eq!(inputs.sim.len(), 1);
        assert_eq!(inputs.problems.len(), 2, "{:?}", inputs.problems);
        assert!(
            inputs
                .problems
                .iter()
                .any(|p| p.contains("gc_scaling.json"))
        );
        assert!(inputs.problems.iter().any(|p| p.contains("estimates.json")));
    }
}
