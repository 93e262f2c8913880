//! Several `ocistore serve` processes over one object root (the `object`
//! backend on a directory), for the report (DESIGN §15, issue 19):
//!
//! - **lost tags**: the zot #4337 workload (`cli/tests/instances`: 3
//!   instances, 12 clients spread over them, 10 tagged images each into one
//!   repository), run in the unsafe mode (`serve --unsafe-shared-root`:
//!   in-process locks, each instance its own view) and in the shared mode
//!   (`--meta-postgres`: metadata and locks in PostgreSQL), the same number
//!   of runs each; per run, the tags acknowledged (201) and the acknowledged
//!   tags the repository no longer lists;
//! - **throughput**: 16 clients spread over 1, 2 and 4 shared instances
//!   (one fresh PostgreSQL cluster each), and over one instance alone
//!   (redb, in-process locks) for comparison, push 8 small images each (a
//!   config, a 4 KiB layer, a tagged manifest) into 4 shared repositories;
//!   images/s from the median round's wall time, p99 over every image of
//!   every round. The instances share this machine's cores, so more
//!   instances cannot add CPU: this measures what the shared state costs,
//!   not a scale-out.
//!
//! Writes `target/ocistore-bench/multi_instance.json` for the report.
//! Needs PostgreSQL's server binaries (Debian's `postgresql`).
//! `OCISTORE_BENCH_QUICK=1`: one run and one round.

#[path = "../tests/instances/mod.rs"]
mod instances;

use std::net::SocketAddr;
use std::time::Instant;

use e2e::bench::{Phase, quick, summarise, write_result};
use instances::{
    CLIENTS, INSTANCES, Instance, TAGS_PER_CLIENT, object_root, push_tagged, push_tags_concurrently,
};
use serde_json::{Value, json};
use testkit::Postgres;

/// The throughput workload: clients over all instances, images each.
const PUSH_CLIENTS: usize = 16;
const IMAGES_PER_CLIENT: usize = 8;
const REPOS: usize = 4;
/// Instance counts over one shared store.
const SHARED_INSTANCES: [usize; 3] = [1, 2, 4];

/// One run of the zot #4337 workload, in the shared mode or the unsafe one.
async fn lost_tags_run(shared: bool) -> Value {
    let pg = shared.then(Postgres::start);
    let conninfo = pg.as_ref().map(Postgres::conninfo);
    let root_args: Vec<&str> = match &conninfo {
        Some(c) => vec!["--meta-postgres", c],
        None => vec![],
    };
    let serve_args: &[&str] = if shared {
        &[]
    } else {
        &["--unsafe-shared-root"]
    };
    let (_dir, root) = object_root(&root_args);
    let instances: Vec<Instance> = (0..INSTANCES)
        .map(|_| Instance::start(&root, &root_args, serve_args))
        .collect();
    let addrs: Vec<_> = instances.iter().map(|i| i.addr).collect();
    let outcome = push_tags_concurrently(&addrs, "shared/app", CLIENTS, TAGS_PER_CLIENT).await;
    json!({
        "acknowledged": outcome.acknowledged,
        "refused": outcome.refused.len(),
        "lost": outcome.lost.len(),
    })
}

/// `PUSH_CLIENTS` clients, client `c` on instance `c % addrs.len()`, push
/// their images; the wall time and each image's time.
async fn push_round(addrs: &[SocketAddr]) -> Phase {
    let started = Instant::now();
    let tasks: Vec<_> = (0..PUSH_CLIENTS)
        .map(|c| {
            let client = e2e::Client::new(addrs[c % addrs.len()]);
            rtokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in 0..IMAGES_PER_CLIENT {
                    let t = Instant::now();
                    let (r, _) = push_tagged(
                        &client,
                        &format!("bench/r{}", c % REPOS),
                        &format!("c{c}-{i}"),
                        (c * 1000 + i) as u64,
                    )
                    .await;
                    assert_eq!(r.status.as_u16(), 201, "push: {r:?}");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("client task"));
    }
    Phase {
        wall: started.elapsed(),
        latencies,
    }
}

/// A configuration of the throughput part: `None` is one instance alone
/// (redb, in-process locks), `Some(n)` is n instances sharing PostgreSQL.
async fn throughput_round(shared: Option<usize>) -> Phase {
    let pg = shared.map(|_| Postgres::start());
    let conninfo = pg.as_ref().map(Postgres::conninfo);
    let root_args: Vec<&str> = match &conninfo {
        Some(c) => vec!["--meta-postgres", c],
        None => vec![],
    };
    let (_dir, root) = object_root(&root_args);
    let instances: Vec<Instance> = (0..shared.unwrap_or(1))
        .map(|_| Instance::start(&root, &root_args, &[]))
        .collect();
    let addrs: Vec<_> = instances.iter().map(|i| i.addr).collect();
    push_round(&addrs).await
}

fn config_name(shared: Option<usize>) -> String {
    match shared {
        None => "1 instance alone (redb, in-process locks)".into(),
        Some(n) => format!("{n} instance(s), PostgreSQL meta and locks"),
    }
}

#[rtokio::main(crate = "rtokio", flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let (runs, rounds) = if quick() { (1, 1) } else { (3, 3) };

    let mut modes = Vec::new();
    for (mode, shared) in [("unsafe-shared-root", false), ("shared-postgres", true)] {
        let mut per_run = Vec::new();
        for run in 0..runs {
            let r = lost_tags_run(shared).await;
            println!("lost tags, {mode}, run {run}: {r}");
            per_run.push(r);
        }
        let total = |key: &str| {
            per_run
                .iter()
                .map(|r| r[key].as_u64().unwrap())
                .sum::<u64>()
        };
        modes.push(json!({
            "mode": mode,
            "acknowledged": total("acknowledged"),
            "refused": total("refused"),
            "lost": total("lost"),
            "runs": per_run,
        }));
    }

    let configs: Vec<Option<usize>> = std::iter::once(None)
        .chain(SHARED_INSTANCES.map(Some))
        .collect();
    // Rounds, and in each every configuration in turn, so that compared
    // figures were measured close in time (a shared machine's load drifts).
    let mut measured = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for (k, &config) in configs.iter().enumerate() {
            let phase = throughput_round(config).await;
            println!(
                "round {round}: {:<45} {:>6.2} s",
                config_name(config),
                phase.wall.as_secs_f64()
            );
            measured[k].push(phase);
        }
    }
    let images = PUSH_CLIENTS * IMAGES_PER_CLIENT;
    let throughput: Vec<Value> = configs
        .iter()
        .zip(&measured)
        .map(|(&config, phases)| {
            let mut push = summarise(phases, images, 0);
            // The images are a few KiB: the figure is images/s, not MB/s.
            let fields = push.as_object_mut().unwrap();
            fields.remove("bytes");
            fields.remove("mb_per_s");
            println!(
                "{:<45} {:>6.1} images/s, p99 {:>6.1} ms",
                config_name(config),
                push["images_per_s"].as_f64().unwrap(),
                push["p99_ms"].as_f64().unwrap()
            );
            json!({
                "name": config_name(config),
                "instances": config.unwrap_or(1),
                "shared": config.is_some(),
                "push": push,
            })
        })
        .collect();

    let result = json!({
        "quick": quick(),
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "lost_tags": {
            "instances": INSTANCES,
            "clients": CLIENTS,
            "tags_per_client": TAGS_PER_CLIENT,
            "runs_per_mode": runs,
            "modes": modes,
        },
        "throughput": {
            "clients": PUSH_CLIENTS,
            "images_per_client": IMAGES_PER_CLIENT,
            "repos": REPOS,
            "rounds": rounds,
            "configs": throughput,
        },
    });
    write_result(env!("CARGO_TARGET_TMPDIR"), "multi_instance", &result);
}
