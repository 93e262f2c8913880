//! The scenario file: what to simulate. Documented in `scenarios/README.md`.
//!
//! Strict: an unknown key or a value of the wrong type is an error with its
//! line (toml's own), and a value out of range is an error naming the key
//! and its line. Everything has a default, so a scenario states only what
//! it is about.

use std::fmt;
use std::str::FromStr;

use engine::{LayoutKind, LockPolicy};
use serde::{Deserialize, Serialize};

use crate::workload::OpClass;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Seed used when `--seed`/`--seeds` are not given.
    #[serde(default = "one")]
    pub seed: u64,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub faults: Faults,
    #[serde(default)]
    pub gc: Option<GcSection>,
    #[serde(default)]
    pub migration: Option<Migration>,
    /// Several instances over one store (DESIGN §15), each a madsim node,
    /// with the shared metadata and locks on a service node of their own.
    #[serde(default)]
    pub instances: Option<Instances>,
    /// Claims the run checks about its own results (see README).
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

fn one() -> u64 {
    1
}

/// What the store's driver is like, both on the sim disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// Hard links, rename and the fsync protocol: the fs driver's semantics.
    #[default]
    Links,
    /// No links, no rename, copy + delete, put-if-absent: an object store's.
    Objects,
}

/// Names the engine parses itself (layouts, policies), read from the
/// scenario as their names: a bad one is toml's error, with its line.
mod by_name {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|name| name.parse().map_err(D::Error::custom))
            .collect()
    }

    pub fn serialize<T: Display, S: Serializer>(names: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(names.iter().map(ToString::to_string))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    #[serde(default = "default_layouts", with = "by_name")]
    pub layouts: Vec<LayoutKind>,
    #[serde(default = "default_policies", with = "by_name")]
    pub policies: Vec<LockPolicy>,
    #[serde(default)]
    pub driver: DriverKind,
    #[serde(default)]
    pub latency: Latency,
    /// Bytes the store keeps aside for removals on a full disk
    /// (`Store::keep_reserve`; 0: none). With a reserve, invariant 11 is
    /// checked: removals and GC never fail for space, and once the disk has
    /// filled, pushes are acknowledged again later in the same run.
    #[serde(default)]
    pub reserve_bytes: u64,
}

fn default_layouts() -> Vec<LayoutKind> {
    vec![LayoutKind::Blobstore]
}

fn default_policies() -> Vec<LockPolicy> {
    LockPolicy::ALL.to_vec()
}

impl Default for StoreSection {
    fn default() -> StoreSection {
        StoreSection {
            layouts: default_layouts(),
            policies: default_policies(),
            driver: DriverKind::default(),
            latency: Latency::default(),
            reserve_bytes: 0,
        }
    }
}

/// Per driver call, in virtual time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Round trip per call, microseconds.
    #[serde(default)]
    pub per_call_us: u64,
    /// Transfer rate; 0 = instantaneous.
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// Extra round trip for fsync-class calls (sync_dir), microseconds.
    #[serde(default)]
    pub sync_us: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    #[serde(default = "eight")]
    pub clients: u64,
    #[serde(default = "eight")]
    pub repos: u64,
    /// Virtual seconds of traffic.
    #[serde(default = "default_duration")]
    pub duration_s: f64,
    /// Operations per client (0: until the duration ends).
    #[serde(default)]
    pub ops_per_client: u64,
    #[serde(default = "default_layers")]
    pub layers_per_image: [u64; 2],
    #[serde(default)]
    pub layer_bytes: LayerBytes,
    /// Base layers shared between repositories (the pool), and the chance
    /// that a pushed layer comes from it rather than being new.
    #[serde(default = "eight")]
    pub shared_layers: u64,
    #[serde(default = "half")]
    pub share_probability: f64,
    /// Zipf exponent over the shared pool (0: uniform).
    #[serde(default)]
    pub share_zipf: f64,
    /// Share of reads aimed at repository 0 (the hot one); when set, every
    /// write (push, retag, delete) goes to the hot repository.
    #[serde(default)]
    pub hot_repo_fraction: f64,
    /// A client's pause between operations, virtual microseconds (also what
    /// makes time advance when the store is configured without latency).
    #[serde(default = "default_think")]
    pub think_us: u64,
    /// Images pushed to every repository before the clock starts.
    #[serde(default)]
    pub preload_images: u64,
    /// Every client works on its own repository (client i -> repo i % repos).
    #[serde(default)]
    pub client_owns_repo: bool,
    /// Zipf exponent for choosing repositories to pull from (0: uniform).
    #[serde(default)]
    pub pull_zipf: f64,
    #[serde(default)]
    pub mix: Mix,
    /// How clients speak the push protocol (the defaults: monolithic blob
    /// pushes after a HEAD, manifests under tags).
    #[serde(default)]
    pub protocol: Protocol,
    /// Every client of a repository pushes, retags and deletes the same few
    /// tags (`t0`..`t2`): concurrent writers on one tag, checked for
    /// linearizable last-writer-wins (invariant 2). Otherwise each tag has
    /// one writer.
    #[serde(default)]
    pub shared_tags: bool,
    /// Acknowledged `push` operations every run must reach: a store that
    /// refuses what it should take fails the run, however clean the rest.
    #[serde(default)]
    pub min_acked_pushes: u64,
}

/// How a client pushes, as registry clients do (DESIGN §7's delay
/// contract is about exactly these steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// Blobs larger than this go through an upload session in chunks of
    /// this many bytes (0: every blob in one monolithic push).
    #[serde(default)]
    pub chunk_bytes: u64,
    /// Virtual pause between two chunks of a session, milliseconds: with
    /// the chunk size it sets how long a large layer's upload takes.
    #[serde(default)]
    pub chunk_gap_ms: u64,
    /// Chance that a client HEADs a blob before pushing it; otherwise it
    /// pushes blind, as a retrying or re-pushing client does.
    #[serde(default = "one_f")]
    pub head_first: f64,
    /// Chance that a missing shared layer is first mounted from another
    /// repository (`?mount=&from=`), falling back to an upload.
    #[serde(default)]
    pub mount: f64,
    /// Chance that a push puts its manifest by digest (untagged) rather
    /// than under one of the client's tags.
    #[serde(default)]
    pub by_digest: f64,
}

fn one_f() -> f64 {
    1.0
}

impl Default for Protocol {
    fn default() -> Protocol {
        toml::from_str("").expect("defaults")
    }
}

fn eight() -> u64 {
    8
}

fn default_think() -> u64 {
    100
}

fn half() -> f64 {
    0.5
}

fn default_duration() -> f64 {
    2.0
}

fn default_layers() -> [u64; 2] {
    [1, 4]
}

impl Default for Workload {
    fn default() -> Workload {
        toml::from_str("").expect("defaults")
    }
}

/// Relative weights of operation classes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default = "one")]
    pub push: u64,
    #[serde(default = "ten")]
    pub pull: u64,
    #[serde(default)]
    pub retag: u64,
    #[serde(default)]
    pub delete: u64,
    #[serde(default)]
    pub head: u64,
    /// Two images by digest, then an index over them.
    #[serde(default)]
    pub index: u64,
    /// A signature (an artifact whose `subject` is an acknowledged manifest), by digest.
    #[serde(default)]
    pub referrer: u64,
    /// One of the client's recent images again: every blob blind, the
    /// manifest by digest (a CI retry).
    #[serde(default)]
    pub repush: u64,
    /// An upload session started, one chunk sent, never finished.
    #[serde(default)]
    pub abandon: u64,
}

impl Mix {
    /// The weights in [`crate::workload::OpClass::DRAWN`] order.
    pub fn weights(&self) -> [u64; 9] {
        [
            self.push,
            self.pull,
            self.head,
            self.retag,
            self.delete,
            self.index,
            self.referrer,
            self.repush,
            self.abandon,
        ]
    }
}

fn ten() -> u64 {
    10
}

impl Default for Mix {
    fn default() -> Mix {
        toml::from_str("").expect("defaults")
    }
}

/// Layer sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum LayerBytes {
    Fixed {
        bytes: u64,
    },
    Uniform {
        min: u64,
        max: u64,
    },
    /// WORKLOADS.md: `small_share` lognormal(median `small_median`, sigma
    /// 1.26) + the rest lognormal(median `large_median`, sigma 1.8), capped.
    Mixture {
        #[serde(default = "small_share")]
        small_share: f64,
        #[serde(default = "small_median")]
        small_median: f64,
        #[serde(default = "large_median")]
        large_median: f64,
        #[serde(default = "cap")]
        cap: u64,
    },
}

fn small_share() -> f64 {
    0.47
}
fn small_median() -> f64 {
    694.0
}
fn large_median() -> f64 {
    15.4e6
}
fn cap() -> u64 {
    64 << 20
}

impl Default for LayerBytes {
    fn default() -> LayerBytes {
        LayerBytes::Uniform {
            min: 1000,
            max: 20_000,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Virtual times (seconds) of power cuts of the engine node.
    #[serde(default)]
    pub crash_at_s: Vec<f64>,
    /// Additional power cuts at times drawn from the seed.
    #[serde(default)]
    pub random_crashes: u64,
    /// On a power cut, a prefix of the last unsynced write survives.
    #[serde(default)]
    pub torn_writes: bool,
    /// On a power cut, the last unsynced write keeps its length with a
    /// stretch inside it zeroed (instead of a prefix).
    #[serde(default)]
    pub torn_inside: bool,
    /// About one blob read in this many comes back with a bit flipped
    /// (the stored bytes intact): the store must refuse it (invariant 6).
    #[serde(default)]
    pub read_flips_one_in: Option<u64>,
    /// Disk capacity in bytes (0: unlimited).
    #[serde(default)]
    pub capacity_bytes: u64,
    #[serde(default)]
    pub latency_spikes: Vec<Spike>,
    /// A deliberately broken store (see sim/src/broken.rs): the run must
    /// fail. Only for proving the checker.
    #[serde(default)]
    pub broken: Option<crate::broken::Broken>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spike {
    pub at_s: f64,
    pub duration_s: f64,
    pub factor: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcSection {
    pub every_s: f64,
    #[serde(default)]
    pub delay_s: f64,
    /// An upload session idle this long is abandoned (the engine's default
    /// if absent; never less than the delay).
    #[serde(default)]
    pub upload_timeout_s: Option<f64>,
}

impl GcSection {
    pub fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.delay_s)
    }

    /// The options of one periodic pass.
    pub fn options(&self) -> engine::gc::GcOptions {
        let opts = engine::gc::GcOptions::new(self.delay());
        match self.upload_timeout_s {
            Some(t) => opts.upload_timeout(std::time::Duration::from_secs_f64(t)),
            None => opts,
        }
    }

    /// How long a session may sit between two calls and still be live.
    pub fn session_idle_limit(&self) -> std::time::Duration {
        let o = self.options();
        o.delay.max(o.upload_timeout)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// A legacy dataset written before the run: repositories and images each.
    #[serde(default = "four")]
    pub preload_repos: u64,
    #[serde(default = "four")]
    pub preload_images: u64,
    #[serde(default)]
    pub mode: MigrationMode,
    /// Power cuts during the migration, after this many machine operations
    /// (drawn from the seed if empty and `random_crashes` > 0).
    #[serde(default)]
    pub crash_after_ops: Vec<u64>,
    #[serde(default)]
    pub random_crashes: u64,
    /// Disk full after this many operations; freed before the retry.
    #[serde(default)]
    pub no_space_after_ops: Vec<u64>,
}

fn four() -> u64 {
    4
}

/// How a scenario migrates its legacy dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationMode {
    /// Converted where it stands, before serving (with the planned stops).
    #[default]
    InPlace,
    /// A new store filled from the old one, then compared.
    SideBySide,
}

impl std::fmt::Display for MigrationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MigrationMode::InPlace => "in_place",
            MigrationMode::SideBySide => "side_by_side",
        })
    }
}

/// Several instances over one store: their number, what they share, and
/// the faults of a cluster (network, crashes, pauses, the service going).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instances {
    /// Instances serving the clients (client i talks to instance i % count).
    pub count: u64,
    #[serde(default)]
    pub shared: SharedState,
    /// One-way delay of a message between an instance and the service,
    /// drawn per message, milliseconds `[min, max]`.
    #[serde(default = "default_net_ms")]
    pub net_ms: [u64; 2],
    /// How long the service keeps a silent instance's locks (a database
    /// connection's timeout), seconds; instances heartbeat at a fifth of it.
    #[serde(default = "one_f")]
    pub session_ttl_s: f64,
    /// How long a GC sweep's lease lasts (renewed at half), seconds.
    #[serde(default = "default_sweep_lease")]
    pub sweep_lease_s: f64,
    /// Instance crashes (killed, restarted `restart_after_s` later), at
    /// times and on instances drawn from the seed.
    #[serde(default)]
    pub crashes: u64,
    #[serde(default = "default_restart_after")]
    pub restart_after_s: f64,
    /// Instances paused (a GC stop, a frozen VM) for `pause_s`, longer
    /// than the session and the lease: they wake with a stale view.
    #[serde(default)]
    pub pauses: u64,
    #[serde(default = "default_pause")]
    pub pause_s: f64,
    /// Pauses, `pause_s` long, of whichever instance holds the GC sweep's
    /// lease at the drawn time (the first to take it after): it wakes
    /// mid-sweep, its lease taken over, and its next fenced write must fail.
    #[serde(default)]
    pub sweeper_pauses: u64,
    /// Partitions between an instance and the service, `partition_s` long.
    #[serde(default)]
    pub partitions: u64,
    /// index.json writes that stall after their lock check while their
    /// instance is cut off from the service for `partition_s`: its locks
    /// lapse, another instance may take them and write, and the stalled
    /// write must then be refused (compare-and-swap).
    #[serde(default)]
    pub stalled_swaps: u64,
    /// UNSAFE, for proving the checker: the object store applies
    /// index.json writes whatever their condition (an S3 look-alike that
    /// ignores `If-Match` and still passes the startup probe, which writes
    /// elsewhere). With `stalled_swaps`, acknowledged tags are lost.
    #[serde(default)]
    pub ignore_swap_conditions: bool,
    #[serde(default = "default_pause")]
    pub partition_s: f64,
    /// Restarts of the service (every session and lock it held is gone;
    /// its data, like PostgreSQL's, stays).
    #[serde(default)]
    pub service_restarts: u64,
}

fn default_net_ms() -> [u64; 2] {
    [1, 10]
}
fn default_sweep_lease() -> f64 {
    2.0
}
fn default_restart_after() -> f64 {
    0.3
}
fn default_pause() -> f64 {
    3.0
}

/// What the instances share besides the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedState {
    /// Metadata and locks on the service, compare-and-swap on index.json,
    /// the sweep under a fenced lease (DESIGN §15).
    #[default]
    Service,
    /// UNSAFE, zot's scale-out: metadata on the service but each instance
    /// with its own in-process locks and plain index.json rewrites (zot
    /// #4337 loses tags this way). For proving the checker finds it.
    InProcessLocks,
}

/// A claim about the run's own figures, checked and reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(with = "as_text")]
    pub metric: Metric,
    /// `<policy>` or `<layout>/<policy>`.
    #[serde(with = "as_text")]
    pub of: RunRef,
    pub is: Comparison,
    /// times the same metric of `than`.
    pub factor: f64,
    /// `<policy>`, `<layout>/<policy>`, or `<scenario-file>:<policy>` for a baseline run.
    #[serde(with = "as_text")]
    pub than: RunRef,
}

/// A figure of a run an expectation compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Acknowledged operations per virtual second.
    Throughput,
    /// p99 latency of one operation class.
    P99(OpClass),
    /// p99 of pulls of repositories other than the hot one.
    QuietP99,
}

impl FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Metric, String> {
        match s {
            "throughput" => Ok(Metric::Throughput),
            "quiet_p99" => Ok(Metric::QuietP99),
            _ => s
                .strip_prefix("p99:")
                .and_then(|c| OpClass::ALL.into_iter().find(|k| k.name() == c))
                .map(Metric::P99)
                .ok_or_else(|| {
                    format!("unknown metric {s:?} (throughput, quiet_p99, p99:<class>)")
                }),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Throughput => f.write_str("throughput"),
            Metric::QuietP99 => f.write_str("quiet_p99"),
            Metric::P99(c) => write!(f, "p99:{}", c.name()),
        }
    }
}

/// Which run of the same seed a figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRef {
    /// This scenario's run of a policy (its first layout listing it).
    Policy(LockPolicy),
    /// This scenario's run of one layout and policy.
    Config(LayoutKind, LockPolicy),
    /// A run of another scenario file (a baseline), same seed.
    Baseline { file: String, policy: LockPolicy },
}

impl RunRef {
    /// Whether the run labelled `layout`/`policy` of this scenario is the one.
    pub fn is(&self, layout: &str, policy: &str) -> bool {
        match self {
            RunRef::Policy(p) => p.as_str() == policy,
            RunRef::Config(l, p) => l.as_str() == layout && p.as_str() == policy,
            RunRef::Baseline { .. } => false,
        }
    }
}

impl FromStr for RunRef {
    type Err = String;
    fn from_str(s: &str) -> Result<RunRef, String> {
        if let Some((file, policy)) = s.split_once(':') {
            return Ok(RunRef::Baseline {
                file: file.to_owned(),
                policy: policy.parse()?,
            });
        }
        match s.split_once('/') {
            Some((layout, policy)) => Ok(RunRef::Config(layout.parse()?, policy.parse()?)),
            None => Ok(RunRef::Policy(s.parse()?)),
        }
    }
}

impl fmt::Display for RunRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunRef::Policy(p) => write!(f, "{p}"),
            RunRef::Config(l, p) => write!(f, "{l}/{p}"),
            RunRef::Baseline { file, policy } => write!(f, "{file}:{policy}"),
        }
    }
}

/// `>=` or `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    #[serde(rename = ">=")]
    AtLeast,
    #[serde(rename = "<=")]
    AtMost,
}

impl Comparison {
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            Comparison::AtLeast => lhs >= rhs,
            Comparison::AtMost => lhs <= rhs,
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::AtLeast => ">=",
            Comparison::AtMost => "<=",
        })
    }
}

/// A value written in the scenario as its text (`FromStr`/`Display`): a
/// bad one is toml's error, with its line.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err = String>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
}

/// A scenario error, with where it is.
#[derive(Debug)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Line (1-based) of `key` in `src`, for messages about valid TOML with bad values.
fn line_of(src: &str, key: &str) -> String {
    let short = key.rsplit('.').next().unwrap_or(key);
    src.lines()
        .position(|l| l.trim_start().starts_with(short) && l.contains('='))
        .map_or_else(String::new, |i| format!(" (line {})", i + 1))
}

impl Scenario {
    /// Reads and parses the scenario file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Scenario, String> {
        let src = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&src, &path.display().to_string()).map_err(|e| e.0)
    }

    pub fn parse(src: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(src).map_err(|e| ScenarioError(format!("{file}: {e}")))?;
        s.validate(src, file)?;
        Ok(s)
    }

    fn validate(&self, src: &str, file: &str) -> Result<(), ScenarioError> {
        let bad = |key: &str, why: &str| {
            Err(ScenarioError(format!(
                "{file}: {key}{}: {why}",
                line_of(src, key)
            )))
        };
        if self.store.layouts.is_empty() || self.store.policies.is_empty() {
            return bad("store.layouts", "at least one layout and one policy");
        }
        let w = &self.workload;
        if w.clients == 0 || w.clients > 10_000 {
            return bad("workload.clients", "must be 1..=10000");
        }
        if w.repos == 0 || w.repos > 100_000 {
            return bad("workload.repos", "must be 1..=100000");
        }
        if !(w.duration_s > 0.0 && w.duration_s <= 86_400.0) {
            return bad("workload.duration_s", "must be > 0 and <= 86400");
        }
        if w.layers_per_image[0] == 0
            || w.layers_per_image[0] > w.layers_per_image[1]
            || w.layers_per_image[1] > 128
        {
            return bad(
                "workload.layers_per_image",
                "must be [min, max] with 1 <= min <= max <= 128",
            );
        }
        for (key, p) in [
            ("workload.share_probability", w.share_probability),
            ("workload.hot_repo_fraction", w.hot_repo_fraction),
            ("workload.protocol.head_first", w.protocol.head_first),
            ("workload.protocol.mount", w.protocol.mount),
            ("workload.protocol.by_digest", w.protocol.by_digest),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(key, "must be between 0 and 1");
            }
        }
        if w.think_us == 0 || w.think_us > 60_000_000 {
            return bad(
                "workload.think_us",
                "must be 1..=60000000 (time must advance)",
            );
        }
        if w.mix.weights().iter().sum::<u64>() == 0 {
            return bad("workload.mix", "at least one weight must be positive");
        }
        match &w.layer_bytes {
            LayerBytes::Uniform { min, max } if min > max || *max > 1 << 30 => {
                return bad("workload.layer_bytes", "uniform needs min <= max <= 1 GiB");
            }
            LayerBytes::Fixed { bytes } if *bytes > 1 << 30 => {
                return bad("workload.layer_bytes", "at most 1 GiB");
            }
            _ => {}
        }
        for t in &self.faults.crash_at_s {
            if !(*t > 0.0 && *t < w.duration_s) {
                return bad(
                    "faults.crash_at_s",
                    "each time must be inside (0, duration_s)",
                );
            }
        }
        if self.faults.read_flips_one_in == Some(0) {
            return bad("faults.read_flips_one_in", "must be >= 1");
        }
        if self.faults.torn_writes && self.faults.torn_inside {
            return bad(
                "faults.torn_inside",
                "tears either a prefix (torn_writes) or inside (torn_inside), not both",
            );
        }
        if let Some(gc) = &self.gc {
            if gc.every_s.is_nan() || gc.every_s <= 0.0 {
                return bad("gc.every_s", "must be > 0");
            }
            if !(0.0..=86_400.0).contains(&gc.delay_s) {
                return bad("gc.delay_s", "must be between 0 and 86400");
            }
            if gc
                .upload_timeout_s
                .is_some_and(|t| !(0.0..=86_400.0).contains(&t))
            {
                return bad("gc.upload_timeout_s", "must be between 0 and 86400");
            }
        }
        if w.protocol.chunk_gap_ms > 60_000 {
            return bad("workload.protocol.chunk_gap_ms", "must be <= 60000");
        }
        if let Some(i) = &self.instances {
            self.validate_instances(i, src, file)?;
        }
        if let Some(m) = &self.migration {
            if m.preload_repos == 0 {
                return bad("migration.preload_repos", "must be >= 1");
            }
            if self.store.layouts != [LayoutKind::Blobstore] {
                return bad(
                    "store.layouts",
                    "a migration scenario migrates to [\"blobstore\"]",
                );
            }
        }
        Ok(())
    }

    fn validate_instances(
        &self,
        i: &Instances,
        src: &str,
        file: &str,
    ) -> Result<(), ScenarioError> {
        let bad = |key: &str, why: &str| {
            Err(ScenarioError(format!(
                "{file}: {key}{}: {why}",
                line_of(src, key)
            )))
        };
        if !(1..=16).contains(&i.count) {
            return bad("instances.count", "must be 1..=16");
        }
        if i.net_ms[0] > i.net_ms[1] || i.net_ms[1] > 10_000 {
            return bad(
                "instances.net_ms",
                "must be [min, max] with min <= max <= 10000",
            );
        }
        for (key, v) in [
            ("instances.session_ttl_s", i.session_ttl_s),
            ("instances.sweep_lease_s", i.sweep_lease_s),
            ("instances.restart_after_s", i.restart_after_s),
            ("instances.pause_s", i.pause_s),
            ("instances.partition_s", i.partition_s),
        ] {
            if !(v > 0.0 && v <= 3600.0) {
                return bad(key, "must be > 0 and <= 3600");
            }
        }
        // Several instances share an object store on the sim disk; a power
        // cut of that disk is not a fault of theirs (S3 does not lose power
        // with an instance), and migration runs before instances exist.
        if self.store.driver != DriverKind::Objects || self.store.layouts != [LayoutKind::Blobstore]
        {
            return bad(
                "instances",
                "several instances share a blobstore root on objects: driver = \"objects\", layouts = [\"blobstore\"]",
            );
        }
        if !self.faults.crash_at_s.is_empty()
            || self.faults.random_crashes > 0
            || self.faults.capacity_bytes > 0
            || self.faults.broken.is_some()
            || self.migration.is_some()
        {
            return bad(
                "instances",
                "the faults of several instances are in [instances] (no power cuts, full disks, broken stores or migration)",
            );
        }
        Ok(())
    }

    /// Every (layout, policy) pair to run, optionally only one policy.
    pub fn configs(&self, only: Option<LockPolicy>) -> Vec<(LayoutKind, LockPolicy)> {
        let mut out = Vec::new();
        for &l in &self.store.layouts {
            for &p in &self.store.policies {
                if only.is_none_or(|o| o == p) {
                    out.push((l, p));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_almost_empty_file() {
        let s = Scenario::parse("name = \"x\"\n", "x.toml").unwrap();
        assert_eq!(s.workload.clients, 8);
        assert_eq!(s.configs(None).len(), 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_line() {
        let e = Scenario::parse("name = \"x\"\n[workload]\nclinets = 3\n", "x.toml").unwrap_err();
        assert!(e.0.contains("line 3") && e.0.contains("clinets"), "{e}");
        let e = Scenario::parse("name = \"x\"\n\n[workload]\nclients = 0\n", "x.toml").unwrap_err();
        assert!(e.0.contains("workload.clients (line 4)"), "{e}");
        // Typed settings: a bad name is an error with its line, never a default.
        for (src, line, says) in [
            (
                "[store]\npolicies = [\"fast\"]\n",
                "line 3",
                "unknown lock policy \"fast\"",
            ),
            ("[store]\nlayouts = [\"flat\"]\n", "line 3", "flat"),
            ("[store]\ndriver = \"nfs\"\n", "line 3", "nfs"),
            ("[migration]\nmode = \"twice\"\n", "line 3", "twice"),
            (
                "[[expect]]\nmetric = \"p99:fly\"\nof = \"striped\"\nis = \">=\"\nfactor = 1.0\nthan = \"global\"\n",
                "line 3",
                "unknown metric",
            ),
            (
                "[[expect]]\nmetric = \"throughput\"\nof = \"striped\"\nis = \">=\"\nfactor = 1.0\nthan = \"base.toml:fast\"\n",
                "line 7",
                "unknown lock policy",
            ),
            (
                "[[expect]]\nmetric = \"throughput\"\nof = \"striped\"\nis = \"=>\"\nfactor = 1.0\nthan = \"global\"\n",
                "line 5",
                "=>",
            ),
        ] {
            let e = Scenario::parse(&format!("name = \"x\"\n{src}"), "x.toml").unwrap_err();
            assert!(e.0.contains(line) && e.0.contains(says), "{src}: {e}");
        }
        let e = Scenario::parse("name = 3\n", "x.toml").unwrap_err();
        assert!(e.0.contains("line 1"), "{e}");
    }

    #[test]
    fn several_instances_need_their_own_kind_of_root_and_faults() {
        let objects = "[store]\ndriver = \"objects\"\n";
        for (src, says) in [
            ("[instances]\ncount = 2\n", "driver = \"objects\""),
            (
                &format!("{objects}[instances]\ncount = 0\n"),
                "instances.count (line 5): must be 1..=16",
            ),
            (
                &format!("{objects}[instances]\ncount = 2\nshared = \"none\"\n"),
                "none",
            ),
            (
                &format!("{objects}[instances]\ncount = 2\nnet_ms = [9, 1]\n"),
                "instances.net_ms (line 6)",
            ),
            (
                &format!("{objects}[faults]\nrandom_crashes = 1\n[instances]\ncount = 2\n"),
                "no power cuts",
            ),
        ] {
            let e = Scenario::parse(&format!("name = \"x\"\n{src}"), "x.toml").unwrap_err();
            assert!(e.0.contains(says), "{src}: {e}");
        }
        let ok = Scenario::parse(
            &format!(
                "name = \"x\"\n{objects}[instances]\ncount = 3\nshared = \"in_process_locks\"\n"
            ),
            "x.toml",
        )
        .unwrap();
        assert_eq!(ok.instances.unwrap().shared, SharedState::InProcessLocks);
    }
}
