//! The migration phase of a scenario: a legacy dataset written first, then
//! converted (in place, with power cuts and full disks at the planned
//! machine operations, or side by side), then checked (invariant 8): the
//! same logical content, no markers, no leftover legacy bytes, fsck clean.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use engine::driver::{Driver, SimDisk};
use engine::meta::{MemoryMeta, MetaStore};
use engine::migrate::migrate_in_place;
use engine::oci::media;
use engine::{Digest, LayoutKind, Reference, RepoName, Store, StoreConfig, Tag};
use serde::Serialize;

use crate::checker::Checker;
use crate::faults::{self, FaultPlan, StopKind};
use crate::rng::Rng;
use crate::scenario::{Migration, MigrationMode};
use crate::world::World;

#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrationSummary {
    pub mode: String,
    pub repos: usize,
    /// Machine operations of the whole migration, uninterrupted.
    pub ops: u64,
    /// Stops planned (power cuts and full disks), and those delivered.
    pub planned_stops: usize,
    pub crashes: usize,
    pub no_space_stops: usize,
    pub bytes_copied: u64,
    pub blobs_relinked: u64,
    pub markers_removed: u64,
    pub virtual_ms: f64,
}

type Logical = BTreeMap<String, (BTreeMap<String, Digest>, BTreeMap<Digest, Digest>)>;

/// Tags and every blob's digest as read back (bytes hashed on the way).
async fn logical(s: &Store) -> Logical {
    let mut out = Logical::new();
    for repo in s.repositories().await.unwrap_or_default() {
        let mut tags = BTreeMap::new();
        for t in s.tags(&repo, None, None).await.unwrap_or_default() {
            if let Ok(m) = s.get_manifest(&repo, &Reference::Tag(t.clone())).await {
                tags.insert(t.to_string(), m.digest);
            }
        }
        let mut blobs = BTreeMap::new();
        for d in s.repo_blobs(&repo).await.unwrap_or_default() {
            if let Ok(b) = s.get_blob(&repo, &d).await {
                blobs.insert(d.clone(), Digest::sha256(&b));
            }
        }
        out.insert(repo.to_string(), (tags, blobs));
    }
    out
}

/// A legacy dataset: images sharing base layers across repositories.
async fn preload(store: &Store, m: &Migration, rng: &Rng) {
    let mut rng = rng.fork(0x9e10);
    let base: Vec<(Digest, Bytes)> = (0..4)
        .map(|i| {
            let b = testkit::pattern(0xba5e + i, 2000 + i as usize * 500);
            (Digest::sha256(&b), b)
        })
        .collect();
    for r in 0..m.preload_repos {
        let repo = RepoName::parse(&format!("legacy{r}")).expect("valid");
        for i in 0..m.preload_images {
            let own = testkit::pattern(rng.next(), 500 + rng.below(3000) as usize);
            let own = (Digest::sha256(&own), own);
            let config = testkit::pattern(rng.next(), 100);
            let config = (Digest::sha256(&config), config);
            let layers = [base[(r + i) as usize % 4].clone(), own];
            for (d, b) in std::iter::once(&config).chain(&layers) {
                store.push_blob(&repo, d, b.clone()).await.expect("preload");
            }
            let body = testkit::oci::Image::new(&config, &layers).build().bytes;
            let tag = Reference::Tag(Tag::parse(&format!("v{i}")).expect("valid"));
            store
                .put_manifest(&repo, &tag, media::OCI_MANIFEST, body)
                .await
                .expect("preload");
        }
    }
}

/// Machine operations (disk calls and metadata commits) of an
/// uninterrupted migration of the scenario's dataset, on a disk of its own.
async fn probe_length(m: &Migration, legacy: StoreConfig, world: &World, rng: &Rng) -> u64 {
    let disk = SimDisk::new();
    let meta: Arc<dyn MetaStore> = Arc::new(MemoryMeta::on_machine(disk.clone()));
    let driver = world.driver_on(&disk);
    let store = Store::open(driver.clone(), meta.clone(), legacy)
        .await
        .expect("fresh legacy root");
    preload(&store, m, rng).await;
    drop(store);
    disk.power_on();
    let _ = migrate_in_place(driver, meta, &|_, _| {}).await;
    disk.ops_since_power_on()
}

/// The power cut the fault plan injected (the disk or the metadata store
/// lost power), as opposed to any other failure.
fn crashed(e: &engine::StoreError) -> bool {
    matches!(
        e,
        engine::StoreError::Storage(engine::driver::DriverError::Crashed { .. })
            | engine::StoreError::Meta(engine::meta::MetaError::Crashed)
    )
}

fn markers(disk: &SimDisk) -> usize {
    let empty = Digest::sha256(b"").hex().to_owned();
    disk.durable_image()
        .iter()
        .filter(|(p, b)| p.contains("/blobs/") && b.is_empty() && !p.ends_with(&empty))
        .count()
}

/// The migration phase on `world`, stopped where `plan` says.
pub async fn run(
    m: &Migration,
    world: &World,
    plan: &FaultPlan,
    checker: &Checker,
    rng: &Rng,
) -> MigrationSummary {
    let (disk, driver, policy) = (&world.disk, &world.driver, world.config.policy);
    let started = tokio::time::Instant::now();
    let legacy = StoreConfig {
        layout: LayoutKind::Legacy,
        policy,
    };
    let blobstore = StoreConfig {
        layout: LayoutKind::Blobstore,
        policy,
    };
    let meta_dyn = world.meta();
    let mut summary = MigrationSummary {
        mode: m.mode.to_string(),
        ..MigrationSummary::default()
    };
    if m.mode == MigrationMode::SideBySide {
        let old_disk = SimDisk::new();
        let old_driver: Arc<dyn Driver> = Arc::new(engine::driver::SimDriver::on(old_disk.clone()));
        let old = Store::open(old_driver, Arc::new(MemoryMeta::new()), legacy)
            .await
            .expect("fresh");
        preload(&old, m, rng).await;
        let new = Store::open(driver.clone(), meta_dyn, blobstore)
            .await
            .expect("fresh");
        match engine::migrate::sync::sync_stores(&old, &new).await {
            Ok(r) if r.equal() && r.problems.is_empty() => summary.bytes_copied = r.bytes_copied,
            Ok(r) => checker.violation(format!(
                "side-by-side sync differs: {:?} {:?} (invariant 8)",
                r.differences, r.problems
            )),
            Err(e) => checker.violation(format!("side-by-side sync failed: {e}")),
        }
        summary.repos = new.repositories().await.map(|c| c.len()).unwrap_or(0);
        summary.virtual_ms = started.elapsed().as_secs_f64() * 1e3;
        return summary;
    }
    let store = Store::open(driver.clone(), meta_dyn.clone(), legacy)
        .await
        .expect("fresh legacy root");
    preload(&store, m, rng).await;
    let before = logical(&store).await;
    drop(store);
    summary.repos = before.len();

    // How long the migration is: the same dataset migrated once, without
    // faults, on a disk of its own. Every stop is placed inside that length.
    summary.ops = probe_length(m, legacy, world, rng).await;
    let n = summary.ops.max(2);
    let stops = plan.migration_stops(n);
    summary.planned_stops = stops.len();
    if let Some(s) = stops.iter().find(|s| s.after_ops >= n) {
        checker.violation(format!(
            "a planned migration stop after {} operations is past the migration's end ({n} operations)",
            s.after_ops
        ));
    }
    // Positions count along the uninterrupted migration. A resumed run
    // skips only repositories done before the previous stop and redoes
    // the interrupted one, so it has at least the rest of those operations
    // left: a stop `k - previous` operations into it lands before its end.
    disk.power_on(); // the stops count the migration's operations only
    let mut previous = 0;
    for stop in stops.into_iter().filter(|s| s.after_ops < n) {
        let k = stop.after_ops;
        let after = k - previous;
        previous = k;
        let migration = migrate_in_place(driver.clone(), meta_dyn.clone(), &|_, _| {});
        let result = faults::stop_migration(world, stop, after, migration).await;
        let crash = stop.kind == StopKind::PowerCut;
        match result {
            Err(e) if crash && crashed(&e) => summary.crashes += 1,
            Err(e) if !crash && e.is_no_space() => summary.no_space_stops += 1,
            Ok(_) => checker.violation(format!(
                "the migration finished before its planned stop after {k} operations"
            )),
            Err(e) => checker.violation(format!(
                "migration stopped by {e}, not by the planned {} (invariant 8)",
                if crash { "power cut" } else { "full disk" }
            )),
        }
    }
    match migrate_in_place(driver.clone(), meta_dyn.clone(), &|_, _| {}).await {
        Ok(r) => {
            summary.bytes_copied = r.bytes_copied;
            summary.blobs_relinked = r.blobs_relinked;
            summary.markers_removed = r.markers_removed;
            for p in r.problems {
                checker.violation(format!("migration reported: {p}"));
            }
        }
        Err(e) => checker.violation(format!(
            "migration did not finish after its faults: {e} (invariant 8)"
        )),
    }
    summary.virtual_ms = started.elapsed().as_secs_f64() * 1e3;
    match Store::open(driver.clone(), meta_dyn, blobstore).await {
        Ok(migrated) => {
            let after = logical(&migrated).await;
            if after != before {
                let changed: Vec<_> = before
                    .keys()
                    .chain(after.keys())
                    .filter(|r| before.get(*r) != after.get(*r))
                    .collect();
                checker.violation(format!(
                    "migration changed the content of {changed:?} (invariant 8)"
                ));
            }
            checker.fsck(&migrated, "after migration", false).await;
        }
        Err(e) => checker.violation(format!(
            "the migrated root does not open: {e} (invariant 8)"
        )),
    }
    if markers(disk) > 0 {
        checker.violation(format!(
            "{} markers left after migration (invariant 8)",
            markers(disk)
        ));
    }
    summary
}
