//! Model-based test: random sequences of operations run against the store
//! and against a plain in-memory model of OCI semantics; every result (value
//! or error code) must agree, for both layouts, on a linking and a
//! non-linking driver. proptest shrinks a failing sequence to a minimal one.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use common::*;
use engine::oci::media;
use engine::{Digest, ErrorCode, LayoutKind, LockPolicy, Reference, StoreError};
use proptest::prelude::*;

const REPOS: usize = 3;
const BLOBS: usize = 4;
const IMAGES: usize = 3;
const TAGS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    PushBlob(usize, usize),
    StatBlob(usize, usize),
    GetBlob(usize, usize),
    DeleteBlob(usize, usize),
    Mount(usize, usize, usize),
    PushManifest(usize, usize, Option<usize>),
    GetManifest(usize, usize),
    DeleteTag(usize, usize),
    DeleteManifest(usize, usize),
    Tags(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..REPOS;
    prop_oneof![
        3 => (r.clone(), 0..BLOBS).prop_map(|(r, b)| Op::PushBlob(r, b)),
        1 => (r.clone(), 0..BLOBS).prop_map(|(r, b)| Op::StatBlob(r, b)),
        1 => (r.clone(), 0..BLOBS).prop_map(|(r, b)| Op::GetBlob(r, b)),
        2 => (r.clone(), 0..BLOBS).prop_map(|(r, b)| Op::DeleteBlob(r, b)),
        1 => (r.clone(), r.clone(), 0..BLOBS).prop_map(|(a, b, d)| Op::Mount(a, b, d)),
        3 => (r.clone(), 0..IMAGES, proptest::option::of(0..TAGS)).prop_map(|(r, i, t)| Op::PushManifest(r, i, t)),
        1 => (r.clone(), 0..TAGS).prop_map(|(r, t)| Op::GetManifest(r, t)),
        1 => (r.clone(), 0..TAGS).prop_map(|(r, t)| Op::DeleteTag(r, t)),
        1 => (r.clone(), 0..IMAGES).prop_map(|(r, i)| Op::DeleteManifest(r, i)),
        1 => r.prop_map(Op::Tags),
    ]
}

/// What an operation returned, reduced to what the model can predict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Size(u64),
    Bytes(Bytes),
    Bool(bool),
    Digest(Digest),
    Tags(Vec<String>),
    Err(Option<ErrorCode>),
}

fn err(e: StoreError) -> Outcome {
    Outcome::Err(e.code())
}

#[derive(Debug, Default, Clone)]
struct RepoModel {
    blobs: BTreeSet<Digest>,
    /// index.json rows: (digest, tag)
    rows: Vec<(Digest, Option<String>)>,
}

/// The OCI semantics, written plainly.
#[derive(Debug, Default)]
struct Model {
    repos: BTreeMap<usize, RepoModel>,
}

struct World {
    blobs: Vec<(Digest, Bytes)>,
    images: Vec<Image>,
}

fn world() -> World {
    let blobs: Vec<_> = (0..BLOBS as u64)
        .map(|i| blob(i + 1, 50 + i as usize * 40))
        .collect();
    // Image i uses blob i as config and blob i+1 as its layer.
    let images = (0..IMAGES)
        .map(|i| image_with(blobs[i].clone(), vec![blobs[i + 1].clone()], None, None))
        .collect();
    World { blobs, images }
}

impl Model {
    fn untag(rows: &mut Vec<(Digest, Option<String>)>, tag: &str) -> bool {
        let Some(pos) = rows.iter().position(|(_, t)| t.as_deref() == Some(tag)) else {
            return false;
        };
        let (d, _) = rows.remove(pos);
        if !rows.iter().any(|(x, _)| *x == d) {
            rows.push((d, None));
        }
        true
    }

    fn apply(&mut self, w: &World, op: &Op) -> Outcome {
        use Outcome::*;
        let unknown = |c| Err(Some(c));
        match *op {
            Op::PushBlob(r, b) => {
                self.repos
                    .entry(r)
                    .or_default()
                    .blobs
                    .insert(w.blobs[b].0.clone());
                Ok
            }
            Op::StatBlob(r, b) | Op::GetBlob(r, b) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let (d, data) = &w.blobs[b];
                if !repo.blobs.contains(d) {
                    return unknown(ErrorCode::BlobUnknown);
                }
                if matches!(op, Op::StatBlob(..)) {
                    Size(data.len() as u64)
                } else {
                    Bytes(data.clone())
                }
            }
            Op::DeleteBlob(r, b) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let d = &w.blobs[b].0;
                if !repo.blobs.contains(d) {
                    return unknown(ErrorCode::BlobUnknown);
                }
                let referenced = repo.rows.iter().any(|(m, _)| {
                    w.images.iter().any(|img| {
                        &img.digest == m
                            && (img.config.0 == *d || img.layers.iter().any(|l| l.0 == *d))
                    })
                });
                if referenced {
                    return unknown(ErrorCode::Denied);
                }
                repo.blobs.remove(d);
                Ok
            }
            Op::Mount(from, to, b) => {
                let d = &w.blobs[b].0;
                let held = self.repos.get(&from).is_some_and(|r| r.blobs.contains(d));
                let target = self.repos.entry(to).or_default();
                if held {
                    target.blobs.insert(d.clone());
                }
                Bool(held)
            }
            Op::PushManifest(r, i, t) => {
                let img = &w.images[i];
                let repo = self.repos.entry(r).or_default();
                for (d, _) in std::iter::once(&img.config).chain(&img.layers) {
                    if !repo.blobs.contains(d) {
                        return unknown(ErrorCode::ManifestBlobUnknown);
                    }
                }
                repo.blobs.insert(img.digest.clone());
                match t {
                    Some(t) => {
                        let tag = format!("t{t}");
                        Model::untag(&mut repo.rows, &tag);
                        repo.rows
                            .retain(|(d, t)| !(d == &img.digest && t.is_none()));
                        repo.rows.push((img.digest.clone(), Some(tag)));
                    }
                    None => {
                        if !repo.rows.iter().any(|(d, _)| d == &img.digest) {
                            repo.rows.push((img.digest.clone(), None));
                        }
                    }
                }
                Digest(img.digest.clone())
            }
            Op::GetManifest(r, t) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let tag = format!("t{t}");
                match repo.rows.iter().find(|(_, x)| x.as_deref() == Some(&tag)) {
                    Some((d, _)) => Digest(d.clone()),
                    None => unknown(ErrorCode::ManifestUnknown),
                }
            }
            Op::DeleteTag(r, t) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                if Model::untag(&mut repo.rows, &format!("t{t}")) {
                    Ok
                } else {
                    unknown(ErrorCode::ManifestUnknown)
                }
            }
            Op::DeleteManifest(r, i) => {
                let Some(repo) = self.repos.get_mut(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let d = &w.images[i].digest;
                if !repo.rows.iter().any(|(x, _)| x == d) {
                    return unknown(ErrorCode::ManifestUnknown);
                }
                repo.rows.retain(|(x, _)| x != d);
                repo.blobs.remove(d);
                Ok
            }
            Op::Tags(r) => {
                let Some(repo) = self.repos.get(&r) else {
                    return unknown(ErrorCode::NameUnknown);
                };
                let mut tags: Vec<String> =
                    repo.rows.iter().filter_map(|(_, t)| t.clone()).collect();
                tags.sort();
                Tags(tags)
            }
        }
    }
}

async fn run_store(s: &engine::Store, w: &World, op: &Op) -> Outcome {
    let r = |i: usize| repo(&format!("repo{i}"));
    let res = match *op {
        Op::PushBlob(i, b) => s
            .push_blob(&r(i), &w.blobs[b].0, w.blobs[b].1.clone())
            .await
            .map(|_| Outcome::Ok),
        Op::StatBlob(i, b) => s.stat_blob(&r(i), &w.blobs[b].0).await.map(Outcome::Size),
        Op::GetBlob(i, b) => s.get_blob(&r(i), &w.blobs[b].0).await.map(Outcome::Bytes),
        Op::DeleteBlob(i, b) => s
            .delete_blob(&r(i), &w.blobs[b].0)
            .await
            .map(|_| Outcome::Ok),
        Op::Mount(a, b, d) => s
            .mount_blob(&r(a), &r(b), &w.blobs[d].0)
            .await
            .map(Outcome::Bool),
        Op::PushManifest(i, img, t) => {
            let reference = match t {
                Some(t) => tag(&format!("t{t}")),
                None => Reference::Digest(w.images[img].digest.clone()),
            };
            s.put_manifest(
                &r(i),
                &reference,
                media::OCI_MANIFEST,
                w.images[img].manifest.clone(),
            )
            .await
            .map(Outcome::Digest)
        }
        Op::GetManifest(i, t) => s
            .get_manifest(&r(i), &tag(&format!("t{t}")))
            .await
            .map(|m| Outcome::Digest(m.digest)),
        Op::DeleteTag(i, t) => s
            .delete_manifest(&r(i), &tag(&format!("t{t}")))
            .await
            .map(|_| Outcome::Ok),
        Op::DeleteManifest(i, img) => s
            .delete_manifest(&r(i), &Reference::Digest(w.images[img].digest.clone()))
            .await
            .map(|_| Outcome::Ok),
        Op::Tags(i) => s
            .tags(&r(i), None, None)
            .await
            .map(|t| Outcome::Tags(t.iter().map(|t| t.to_string()).collect())),
    };
    res.unwrap_or_else(err)
}

fn check(layout: LayoutKind, backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = harness(layout, LockPolicy::Striped, backend).await;
        let w = world();
        let mut model = Model::default();
        for (n, op) in ops.iter().enumerate() {
            let want = model.apply(&w, op);
            let got = run_store(&h.store, &w, op).await;
            prop_assert_eq!(&got, &want, "{} step {}: {:?}", h.label, n, op);
        }
        let findings = h.store.fsck().await.unwrap();
        prop_assert!(
            findings.iter().all(|f| !f.is_error()),
            "{}: fsck {:?}",
            h.label,
            findings
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn blobstore_on_links(ops in proptest::collection::vec(op(), 1..40)) {
        check(LayoutKind::Blobstore, Backend::Sim, ops)?;
    }

    #[test]
    fn blobstore_on_objects(ops in proptest::collection::vec(op(), 1..40)) {
        check(LayoutKind::Blobstore, Backend::ObjectMemory, ops)?;
    }

    #[test]
    fn legacy_on_links(ops in proptest::collection::vec(op(), 1..40)) {
        check(LayoutKind::Legacy, Backend::Sim, ops)?;
    }

    #[test]
    fn legacy_on_objects(ops in proptest::collection::vec(op(), 1..40)) {
        check(LayoutKind::Legacy, Backend::ObjectMemory, ops)?;
    }
}
