//! Opening an ocistore root on a real directory: the driver (`fs`, or
//! `object` on a directory), the metadata store (redb, inside the root's
//! hidden `_ocistore/`), and the configuration the root was created with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::driver::{Driver, FsDriver, ObjectDriver};
use engine::meta::RedbMeta;
use engine::{LayoutKind, LockPolicy, Store, StoreConfig};

use crate::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A real directory with hard links and the fsync commit protocol.
    Fs,
    /// Object-store semantics (no links, no rename) on a directory.
    Object,
}

/// How to reach a root, from the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RootArgs {
    /// The store's root directory.
    #[arg(
        long,
        short = 'r',
        env = "OCISTORE_ROOT",
        default_value = "./ocistore-root"
    )]
    pub root: PathBuf,
    /// Storage backend for the root.
    #[arg(long, value_enum, env = "OCISTORE_BACKEND", default_value_t = Backend::Fs)]
    pub backend: Backend,
}

pub fn driver(args: &RootArgs) -> Result<Arc<dyn Driver>, CliError> {
    let io = |e: std::io::Error| {
        CliError::Usage(format!("cannot open root {}: {e}", args.root.display()))
    };
    Ok(match args.backend {
        Backend::Fs => Arc::new(FsDriver::open(&args.root).map_err(io)?),
        Backend::Object => Arc::new(ObjectDriver::in_dir(&args.root).map_err(io)?),
    })
}

fn meta_path(root: &Path) -> PathBuf {
    root.join("_ocistore").join("meta.redb")
}

pub fn meta(root: &Path) -> Result<Arc<RedbMeta>, CliError> {
    let path = meta_path(root);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))?;
    Ok(Arc::new(RedbMeta::open(&path)?))
}

/// Creates a root with `config`, or checks an existing one matches it.
pub async fn init(args: &RootArgs, config: StoreConfig) -> Result<Store, CliError> {
    with_reserve(Store::open(driver(args)?, meta(&args.root)?, config).await?).await
}

/// A root on a real disk keeps a reserve, so `rm` and `gc` work when the
/// disk is full (see the engine's `store::reserve`).
async fn with_reserve(store: Store) -> Result<Store, CliError> {
    store.keep_reserve(engine::store::DEFAULT_RESERVE).await?;
    Ok(store)
}

/// Opens an existing root with the configuration it was created with.
pub async fn open(args: &RootArgs) -> Result<Store, CliError> {
    let driver = driver(args)?;
    let Some(config) = Store::stored_config(&*driver).await? else {
        return Err(CliError::Usage(format!(
            "{} is not an ocistore root (no _ocistore/config.json): run `ocistore init --root {}` first",
            args.root.display(),
            args.root.display()
        )));
    };
    with_reserve(Store::open(driver, meta(&args.root)?, config).await?).await
}

pub fn parse_layout(s: &str) -> Result<LayoutKind, String> {
    s.parse()
}

pub fn parse_policy(s: &str) -> Result<LockPolicy, String> {
    s.parse()
}
