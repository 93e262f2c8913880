//! Real `ocistore serve` processes over one root, for the multi-instance
//! tests: started on `127.0.0.1:0` (the address read from the log line
//! that announces it), SIGKILLed when dropped or when a test says so.

#![allow(dead_code)] // each test file uses part of it

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ocistore");

/// Where the instances' store lives: a directory (`--backend object`) or
/// a bucket on moto (`--backend s3`); what every command on it is given.
#[derive(Debug, Clone)]
pub struct Root {
    args: Vec<String>,
}

impl Root {
    /// The object backend over the directory `dir`.
    pub fn object(dir: &Path) -> Root {
        let dir = dir.to_str().expect("utf-8 path").to_owned();
        Root {
            args: ["--root", &dir, "--backend", "object"]
                .map(str::to_owned)
                .to_vec(),
        }
    }

    /// The S3 backend on a fresh bucket of `moto` (`dir` is the unused
    /// `--root`, so nothing can land in the working directory).
    pub fn s3(moto: &testkit::moto::Moto, dir: &Path) -> Root {
        let dir = dir.to_str().expect("utf-8 path").to_owned();
        let args = [
            "--root",
            &dir,
            "--backend",
            "s3",
            "--s3-endpoint",
            &moto.endpoint(),
            "--s3-bucket",
            &moto.bucket("instances"),
            "--s3-access-key-id",
            "testing",
            "--s3-secret-access-key",
            "testing",
        ];
        Root {
            args: args.map(str::to_owned).to_vec(),
        }
    }
}

/// Runs `ocistore ROOT ARGS` to completion; panics unless it succeeds.
/// `ARGS` start with the root's options (e.g. `--meta-postgres`), then the
/// command.
pub fn ocistore(root: &Root, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(&root.args)
        .args(args)
        .output()
        .expect("run ocistore");
    assert!(
        out.status.success(),
        "ocistore {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// One `ocistore serve` process.
#[derive(Debug)]
pub struct Instance {
    pub addr: SocketAddr,
    child: Child,
    /// The log, line by line, drained by a thread so the pipe never fills.
    log: mpsc::Receiver<String>,
}

/// How an instance failed to come up: its exit status and log.
#[derive(Debug)]
pub struct NotServing {
    pub status: Option<std::process::ExitStatus>,
    pub log: String,
}

impl Instance {
    /// `ocistore ROOT [root_args] serve [serve_args]`; waits until it
    /// announces its address.
    pub fn start(root: &Root, root_args: &[&str], serve_args: &[&str]) -> Instance {
        Instance::try_start(root, root_args, serve_args)
            .unwrap_or_else(|e| panic!("serve did not start: {e:?}"))
    }

    pub fn try_start(
        root: &Root,
        root_args: &[&str],
        serve_args: &[&str],
    ) -> Result<Instance, NotServing> {
        let mut child = Command::new(BIN)
            .args(&root.args)
            .args(root_args)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(serve_args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ocistore serve");
        let stderr = child.stderr.take().expect("piped");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut seen = String::new();
        loop {
            match log.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if let Some(addr) = announced_addr(&line) {
                        return Ok(Instance { addr, child, log });
                    }
                }
                Err(_) => {
                    // Closed (exited) or silent for 30 s: either way, not serving.
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(NotServing { status, log: seen });
                }
            }
        }
    }

    /// SIGKILL: no shutdown, no cleanup, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Log lines written since the last call.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address in `serving ... on http://ADDR`.
fn announced_addr(line: &str) -> Option<SocketAddr> {
    let at = line.find("on http://")?;
    line[at + "on http://".len()..]
        .split_whitespace()
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

/// A fresh temporary root, initialised for the object backend with the
/// root's options `root_args`.
pub fn object_root(root_args: &[&str]) -> (tempfile::TempDir, Root) {
    init_root(Root::object, root_args)
}

/// A fresh root, `at` a temporary directory (a backend's constructor),
/// initialised with the root's options `root_args`.
pub fn init_root(at: impl FnOnce(&Path) -> Root, root_args: &[&str]) -> (tempfile::TempDir, Root) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = at(&dir.path().join("root"));
    ocistore(&root, &[root_args, &["init"]].concat());
    (dir, root)
}

/// The zot #4337 workload, the same for the unsafe and the shared mode:
/// instances over one root, clients spread over them, tags per client.
pub const INSTANCES: usize = 3;
pub const CLIENTS: usize = 12;
pub const TAGS_PER_CLIENT: usize = 10;

/// What a concurrent tag push left behind.
#[derive(Debug)]
pub struct TagPushOutcome {
    /// Tags whose manifest PUT answered 201.
    pub acknowledged: usize,
    /// Manifest PUTs answered otherwise (status and body, first few).
    pub refused: Vec<String>,
    /// Acknowledged tags the repository does not list afterwards.
    pub lost: Vec<String>,
}

/// `clients` clients, client `c` talking to instance `c % instances`, each
/// pushing `tags` images (a config, a layer, a manifest by tag) one after
/// another into the one repository `repo`, all clients at once; then counts
/// the acknowledged tags that the repository's tag list (read through the
/// first instance) lacks. The zot #4337 workload.
pub async fn push_tags_concurrently(
    addrs: &[SocketAddr],
    repo: &str,
    clients: usize,
    tags: usize,
) -> TagPushOutcome {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = e2e::Client::new(addrs[c % addrs.len()]);
        let repo = repo.to_owned();
        tasks.push(rtokio::spawn(async move {
            let mut acked = Vec::new();
            let mut refused = Vec::new();
            for t in 0..tags {
                let tag = format!("c{c}-t{t}");
                let (r, _) = push_tagged(&client, &repo, &tag, (c * 1000 + t) as u64).await;
                if r.status.as_u16() == 201 {
                    acked.push(tag);
                } else {
                    refused.push(format!(
                        "{tag}: {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ));
                }
            }
            (acked, refused)
        }));
    }
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        let (a, r) = task.await.expect("client task");
        acknowledged.extend(a);
        refused.extend(r);
    }
    let listed = list_tags(addrs[0], repo).await;
    let lost = acknowledged
        .iter()
        .filter(|t| !listed.contains(t))
        .cloned()
        .collect();
    TagPushOutcome {
        acknowledged: acknowledged.len(),
        refused,
        lost,
    }
}

/// Pushes an image of its own (a config and a layer made from `seed`) and
/// puts its manifest under `tag`; the manifest PUT's response and the
/// manifest's digest.
pub async fn push_tagged(
    client: &e2e::Client,
    repo: &str,
    tag: &str,
    seed: u64,
) -> (e2e::Resp, engine::Digest) {
    let config = format!("{{\"seed\":{seed}}}").into_bytes();
    let layer = testkit::pattern(seed, 4096).to_vec();
    let cd = client.push_blob(repo, &config).await;
    let ld = client.push_blob(repo, &layer).await;
    let manifest = e2e::image_manifest((&cd, config.len()), &[(&ld, layer.len())])
        .build()
        .bytes;
    let r = client
        .put_manifest(repo, tag, e2e::MANIFEST, &manifest)
        .await;
    (r, engine::Digest::sha256(&manifest))
}

/// Every tag of `repo`, as one instance lists it.
pub async fn list_tags(addr: SocketAddr, repo: &str) -> Vec<String> {
    let r = e2e::Client::new(addr)
        .get(&format!("/v2/{repo}/tags/list"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "tags list: {r:?}");
    r.json()["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
