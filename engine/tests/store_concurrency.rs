//! Mixed concurrent traffic on the real multi-thread runtime, every policy
//! and layout: 40 tasks x 25 iterations of push / check / mount / delete /
//! manifest push across 5 repositories and 3 shared digests. It must finish,
//! fail only with the errors the operations may legitimately return, leave
//! fsck clean, and leave no lock behind.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use engine::oci::media;
use engine::{ErrorCode, LayoutKind, LockPolicy, Reference};

const TASKS: u64 = 40;
const ITERATIONS: u64 = 25;
const REPOS: u64 = 5;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn traffic(h: Arc<Harness>, task: u64) {
    let s = &h.store;
    let shared: Vec<_> = (0..3)
        .map(|i| blob(500 + i, 2000 + i as usize * 1000))
        .collect();
    let mut rng = Rng(task * 7919 + 1);
    for i in 0..ITERATIONS {
        let r = repo(&format!("r{}", rng.below(REPOS)));
        let (d, data) = &shared[rng.below(3) as usize];
        let result = match rng.below(6) {
            0 | 1 => s.push_blob(&r, d, data.clone()).await,
            2 => s.stat_blob(&r, d).await.map(|_| ()),
            3 => {
                let other = repo(&format!("r{}", rng.below(REPOS)));
                s.mount_blob(&other, &r, d).await.map(|_| ())
            }
            4 => s.delete_blob(&r, d).await,
            _ => {
                // An image over two shared layers, pushed whole.
                let (l2, d2) = &shared[rng.below(3) as usize];
                let img = image_with(
                    blob(900 + task, 50),
                    vec![(d.clone(), data.clone()), (l2.clone(), d2.clone())],
                    None,
                    None,
                );
                let mut res = Ok(());
                for (bd, bb) in std::iter::once(&img.config).chain(&img.layers) {
                    res = res.and(s.push_blob(&r, bd, bb.clone()).await);
                }
                match res {
                    // A concurrent delete may remove a layer between push and
                    // manifest: MANIFEST_BLOB_UNKNOWN is then the right answer.
                    Ok(()) => s
                        .put_manifest(
                            &r,
                            &Reference::parse(&format!("t{task}-{i}")).unwrap(),
                            media::OCI_MANIFEST,
                            img.manifest.clone(),
                        )
                        .await
                        .map(|_| ()),
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            let allowed = matches!(
                e.code(),
                Some(
                    ErrorCode::BlobUnknown
                        | ErrorCode::Denied
                        | ErrorCode::NameUnknown
                        | ErrorCode::ManifestBlobUnknown
                )
            );
            assert!(allowed, "{} task {task} iteration {i}: {e}", h.label);
        }
    }
}

async fn run(layout: LayoutKind, policy: LockPolicy, backend: Backend) {
    let h = Arc::new(harness(layout, policy, backend).await);
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(traffic(h.clone(), t)))
        .collect();
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("{}: {e}", h.label));
    }
    assert_clean(&h.store, &h.label).await;
    assert_eq!(
        h.store.lock_table_sizes(),
        (0, 0),
        "{}: locks left behind",
        h.label
    );
    // The last acknowledged image of each repo is whole.
    for r in 0..REPOS {
        let r = repo(&format!("r{r}"));
        let Ok(tags) = h.store.tags(&r, None, None).await else {
            continue;
        };
        for t in tags {
            let m = h.store.get_manifest(&r, &Reference::Tag(t)).await.unwrap();
            let parsed = engine::oci::Manifest::parse(&m.media_type, &m.body).unwrap();
            for b in parsed.blobs() {
                let got: Bytes = h.store.get_blob(&r, &b.digest).await.unwrap();
                assert_eq!(got.len() as u64, b.size);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_traffic_every_policy_and_layout() {
    for layout in [LayoutKind::Legacy, LayoutKind::Blobstore] {
        for policy in LockPolicy::ALL {
            for backend in [Backend::Fs, Backend::ObjectMemory, Backend::Sim] {
                run(layout, policy, backend).await;
            }
        }
    }
}
