//! What a root says about itself: the configuration it was created with
//! (`_ocistore/config.json`) and the state of an in-place migration (the
//! metadata store's `migration` table).
//!
//! The store reads both when it opens (a legacy root is not opened as a
//! blobstore one, nor a root whose migration is unfinished); the migration
//! writes both. Neither imports the other: both come here.

use std::fmt::Display;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::driver::{Driver, DriverPath, PutMode};
use crate::error::{StoreError, StoreResult};
use crate::layout::LayoutKind;
use crate::lease::Lease;
use crate::lock::LockPolicy;
use crate::meta::{Batch, MetaStore, Table};
use crate::oci::names::RepoName;

/// The two knobs of DESIGN §2, independent of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreConfig {
    #[serde(serialize_with = "by_name", deserialize_with = "from_name")]
    pub layout: LayoutKind,
    #[serde(serialize_with = "by_name", deserialize_with = "from_name")]
    pub policy: LockPolicy,
}

fn by_name<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn from_name<'de, T: FromStr<Err = String>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    T::from_str(<&str>::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Where the store remembers its configuration, inside its own root.
pub const CONFIG_PATH: &str = "_ocistore/config.json";

fn config_path() -> DriverPath {
    DriverPath::new(CONFIG_PATH).expect("valid")
}

/// The configuration the root behind `driver` was created with, if any.
pub async fn read_config(driver: &dyn Driver) -> StoreResult<Option<StoreConfig>> {
    match driver.get(&config_path(), None).await {
        Ok(stored) => serde_json::from_slice(&stored)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{CONFIG_PATH}: {e}"))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records `config` for a new root; `false` if another opener was first.
pub(crate) async fn create_config(driver: &dyn Driver, config: StoreConfig) -> StoreResult<bool> {
    let body = serde_json::to_vec_pretty(&config).expect("config serialises");
    match driver
        .put(&config_path(), body.into(), PutMode::IfAbsent)
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if e.is_already_exists() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the root's configuration (the migration's point of no return).
pub(crate) async fn replace_config(driver: &dyn Driver, config: StoreConfig) -> StoreResult<()> {
    let body = serde_json::to_vec_pretty(&config).expect("config serialises");
    Ok(driver
        .put(&config_path(), Bytes::from(body), PutMode::Overwrite)
        .await?)
}

// --- in-place migration state --------------------------------------------

const STATE: &[u8] = b"state";
const RUNNING: &[u8] = b"running";
const DONE: &[u8] = b"done";

fn repo_key(repo: &RepoName) -> Vec<u8> {
    format!("repo\0{repo}").into_bytes()
}

/// Is an in-place migration started and unfinished on this root?
pub async fn migration_in_progress(meta: &dyn MetaStore) -> StoreResult<bool> {
    Ok(meta.get(Table::MIGRATION, STATE).await?.as_deref() == Some(RUNNING))
}

/// `batch`, fenced by the migration's lease when there is one.
fn fenced(batch: Batch, lease: Option<&Lease>) -> Batch {
    match lease {
        Some(lease) => lease.fence(batch),
        None => batch,
    }
}

/// From here on, stores refuse to open the root until the migration is done.
pub(crate) async fn mark_migration_running(
    meta: &dyn MetaStore,
    lease: Option<&Lease>,
) -> StoreResult<()> {
    let batch = Batch::new().put(Table::MIGRATION, STATE, RUNNING);
    Ok(meta.commit(fenced(batch, lease)).await?)
}

pub(crate) async fn mark_migration_done(
    meta: &dyn MetaStore,
    lease: Option<&Lease>,
) -> StoreResult<()> {
    let batch = Batch::new().put(Table::MIGRATION, STATE, DONE);
    Ok(meta.commit(fenced(batch, lease)).await?)
}

/// Whether a run (this one or an interrupted one) finished `repo`.
pub(crate) async fn repo_migrated(meta: &dyn MetaStore, repo: &RepoName) -> StoreResult<bool> {
    Ok(meta
        .get(Table::MIGRATION, &repo_key(repo))
        .await?
        .as_deref()
        == Some(DONE))
}

pub(crate) async fn mark_repo_migrated(
    meta: &dyn MetaStore,
    repo: &RepoName,
    lease: Option<&Lease>,
) -> StoreResult<()> {
    let batch = Batch::new().put(Table::MIGRATION, repo_key(repo), DONE);
    Ok(meta.commit(fenced(batch, lease)).await?)
}
