//! Opening an ocistore root: the driver (`fs`, `object` on a directory, or
//! `s3`: a bucket), the metadata store (redb, inside the root directory's
//! hidden `_ocistore/`; on `s3` the root directory holds only that), and
//! the configuration the root was created with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::driver::{Driver, FsDriver, ObjectDriver};
use engine::meta::{MemoryMeta, MetaStore, RedbMeta};
use engine::{LayoutKind, LockPolicy, Store, StoreConfig};
use pgmeta::{PgLocks, PgMeta};

use crate::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A real directory with hard links and the fsync commit protocol.
    Fs,
    /// Object-store semantics (no links, no rename) on a directory.
    Object,
    /// A bucket of an S3 API (the `--s3-*` options); the metadata store
    /// stays in the root directory.
    S3,
}

/// Where the `s3` backend's bucket is, and the keys to it. Options win
/// over the environment (the usual `AWS_*` variables).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct S3Args {
    /// S3 API endpoint (http(s)://host:port); AWS itself when absent.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// Bucket holding the store (must exist).
    #[arg(long, env = "OCISTORE_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Key prefix of the store inside the bucket.
    #[arg(long, env = "OCISTORE_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub s3_session_token: Option<String>,
    /// Address the bucket as bucket.host instead of host/bucket.
    #[arg(long)]
    pub s3_virtual_hosted: bool,
}

impl S3Args {
    fn config(&self) -> Result<ocistore_s3::S3Config, CliError> {
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| CliError::Usage(format!("--backend s3 needs {what}")))
        };
        Ok(ocistore_s3::S3Config {
            prefix: self.s3_prefix.clone(),
            region: self.s3_region.clone(),
            access_key_id: need(
                &self.s3_access_key_id,
                "--s3-access-key-id (or AWS_ACCESS_KEY_ID)",
            )?,
            secret_access_key: need(
                &self.s3_secret_access_key,
                "--s3-secret-access-key (or AWS_SECRET_ACCESS_KEY)",
            )?,
            session_token: self.s3_session_token.clone(),
            virtual_hosted: self.s3_virtual_hosted,
            ..ocistore_s3::S3Config::new(
                self.s3_endpoint.clone(),
                need(&self.s3_bucket, "--s3-bucket (or OCISTORE_S3_BUCKET)")?,
            )
        })
    }
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
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub shared: SharedArgs,
}

/// Where several instances over one root keep what they share (DESIGN §15).
#[derive(Debug, Clone, clap::Args)]
pub struct SharedArgs {
    /// Share this root with other instances: its metadata and locks live in
    /// PostgreSQL at this libpq connection string or URL, instead of a
    /// redb file in the root. Every instance and every command on the root
    /// must name the same database and schema.
    #[arg(long, env = "OCISTORE_META_POSTGRES")]
    pub meta_postgres: Option<String>,
    /// The PostgreSQL schema holding this root's metadata and naming its locks.
    #[arg(long, env = "OCISTORE_META_SCHEMA", default_value = "ocistore")]
    pub meta_schema: String,
}

impl SharedArgs {
    /// A root of this process alone.
    pub fn alone() -> SharedArgs {
        SharedArgs {
            meta_postgres: None,
            meta_schema: "ocistore".into(),
        }
    }
}

pub fn driver(args: &RootArgs) -> Result<Arc<dyn Driver>, CliError> {
    let io = |e: std::io::Error| {
        CliError::Usage(format!("cannot open root {}: {e}", args.root.display()))
    };
    Ok(match args.backend {
        Backend::Fs => Arc::new(FsDriver::open(&args.root).map_err(io)?),
        Backend::Object => Arc::new(ObjectDriver::in_dir(&args.root).map_err(io)?),
        Backend::S3 => Arc::new(s3_driver(args)?),
    })
}

/// The `s3` driver of a root with `--backend s3`.
pub fn s3_driver(args: &RootArgs) -> Result<ocistore_s3::S3Driver, CliError> {
    ocistore_s3::S3Driver::open(args.s3.config()?)
        .map_err(|e| CliError::Usage(format!("cannot open the S3 bucket: {e}")))
}

fn meta_path(root: &Path) -> PathBuf {
    root.join("_ocistore").join("meta.redb")
}

/// The root's metadata store: PostgreSQL when shared, else the redb file
/// inside the root.
pub async fn meta(args: &RootArgs) -> Result<Arc<dyn MetaStore>, CliError> {
    if let Some(conninfo) = &args.shared.meta_postgres {
        return Ok(Arc::new(
            PgMeta::connect(conninfo, &args.shared.meta_schema).await?,
        ));
    }
    let path = meta_path(&args.root);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))?;
    Ok(Arc::new(RedbMeta::open(&path)?))
}

/// Opens the store; shared with other instances when `args` says so.
async fn open_store(
    args: &RootArgs,
    driver: Arc<dyn Driver>,
    meta: Arc<dyn MetaStore>,
    config: StoreConfig,
) -> Result<Store, CliError> {
    let store = match &args.shared.meta_postgres {
        Some(conninfo) => {
            let locks = PgLocks::connect(conninfo, &args.shared.meta_schema)
                .await
                .map_err(|e| CliError::Usage(format!("shared locks on PostgreSQL: {e}")))?;
            Store::open_shared(driver, meta, config, Arc::new(locks)).await?
        }
        None => Store::open(driver, meta, config).await?,
    };
    with_reserve(args, store).await
}

/// Creates a root with `config`, or checks an existing one matches it.
pub async fn init(args: &RootArgs, config: StoreConfig) -> Result<Store, CliError> {
    open_store(args, driver(args)?, meta(args).await?, config).await
}

/// A root on a real disk keeps a reserve, so `rm` and `gc` work when the
/// disk is full (see the engine's `store::reserve`); a bucket never fills.
async fn with_reserve(args: &RootArgs, store: Store) -> Result<Store, CliError> {
    if args.backend != Backend::S3 {
        store.keep_reserve(engine::store::DEFAULT_RESERVE).await?;
    }
    Ok(store)
}

/// Opens an existing root with the configuration it was created with.
pub async fn open(args: &RootArgs) -> Result<Store, CliError> {
    open_with(args, meta(args).await?).await
}

/// Opens an existing root as [`open`] does, with this process's own
/// in-memory metadata instead of the root's redb file, whose lock lets one
/// process at a time open it. UNSAFE (`serve --unsafe-shared-root`): several
/// processes opened this way share the bytes and nothing else, which is how
/// zot #4337 loses tags; kept to reproduce that loss.
pub async fn open_unsafe_shared(args: &RootArgs) -> Result<Store, CliError> {
    if args.shared.meta_postgres.is_some() {
        return Err(CliError::Usage(
            "--unsafe-shared-root and --meta-postgres exclude each other".into(),
        ));
    }
    open_with(args, Arc::new(MemoryMeta::new())).await
}

async fn open_with(args: &RootArgs, meta: Arc<dyn MetaStore>) -> Result<Store, CliError> {
    let driver = driver(args)?;
    let Some(config) = Store::stored_config(&*driver).await? else {
        return Err(CliError::Usage(format!(
            "{} is not an ocistore root (no _ocistore/config.json): run `ocistore init --root {}` first",
            args.root.display(),
            args.root.display()
        )));
    };
    open_store(args, driver, meta, config).await
}

pub fn parse_layout(s: &str) -> Result<LayoutKind, String> {
    s.parse()
}

pub fn parse_policy(s: &str) -> Result<LockPolicy, String> {
    s.parse()
}
