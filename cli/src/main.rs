//! `ocistore`: operate an ocistore root on a real directory.
//!
//! Exit codes: 0 success; 1 `fsck` found problems; 2 bad input or usage;
//! 3 not found; 4 refused (denied, or the root has another configuration);
//! 5 storage failure or a corrupt store.

mod oci_dir;
mod root;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::driver::CallKind;
use engine::{
    Digest, ErrorCode, LayoutKind, LockPolicy, Reference, RepoName, StoreConfig, StoreError, Tag,
};
use serde_json::json;

use crate::root::RootArgs;

/// The engine leaves the allocator to whoever embeds it; this binary, the
/// simulator and the benches choose mimalloc (README, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "ocistore",
    version,
    about = "Operate an ocistore root on a real directory"
)]
struct Cli {
    #[command(flatten)]
    root: RootArgs,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a root (or check an existing one has this configuration).
    Init {
        #[arg(long, value_parser = root::parse_layout, default_value = "blobstore")]
        layout: LayoutKind,
        #[arg(long, value_parser = root::parse_policy, default_value = "striped")]
        policy: LockPolicy,
    },
    /// Import an OCI image layout directory: REPO (every tagged manifest) or REPO:TAG.
    Import { target: String, dir: PathBuf },
    /// Export REPO:TAG or REPO@DIGEST as an OCI image layout directory.
    Export { target: String, dir: PathBuf },
    /// List repositories.
    Ls,
    /// List the tags of a repository.
    Tags { repo: String },
    /// Delete a tag (REPO:TAG) or a manifest with all its tags (REPO@DIGEST).
    Rm { target: String },
    /// Delete a blob from a repository (REPO@DIGEST).
    RmBlob { target: String },
    /// Write a blob or manifest (REPO@DIGEST) to standard output.
    Cat { target: String },
    /// Check the store's invariants; exits 1 on any finding.
    Fsck,
    /// Repositories, manifests, blobs and bytes, with dedupe savings.
    Stats,
    /// Convert this (legacy) root to the blobstore layout in place. Safe to
    /// interrupt: running it again resumes where it stopped.
    Migrate,
    /// Fill a new blobstore root from an old root through the store API,
    /// then compare them (repos, tags, manifests, blobs). Re-runs are incremental.
    Sync {
        /// The old root (any layout).
        #[arg(long)]
        from: PathBuf,
        /// The new root (created as blobstore/striped if new).
        #[arg(long)]
        to: PathBuf,
        /// With `--backend s3`: the new root's key prefix in the bucket
        /// (the old root's is `--s3-prefix`).
        #[arg(long)]
        to_s3_prefix: Option<String>,
    },
    /// Collect garbage: untagged manifests, orphaned referrers, unreferenced
    /// blobs, stale uploads, emptied repositories, unheld _blobstore blobs.
    Gc {
        /// Keep garbage younger than this (e.g. 0s, 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        delay: std::time::Duration,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Serve the root over the OCI Distribution API v1.1 (HTTP, no TLS).
    /// Stops on SIGTERM or ctrl-c after requests in flight finish.
    Serve {
        /// Address to listen on (loopback by default; port 0 picks one).
        #[arg(long, default_value = "127.0.0.1:5000")]
        addr: std::net::SocketAddr,
        /// Run a GC pass this often (e.g. 10m); none if absent.
        #[arg(long, value_parser = parse_duration)]
        gc_every: Option<std::time::Duration>,
        /// What GC passes inside serve keep: garbage touched less than this ago.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        gc_delay: std::time::Duration,
        /// An upload session idle this long is abandoned (never less than --gc-delay).
        #[arg(long, default_value = "15m", value_parser = parse_duration)]
        upload_timeout: std::time::Duration,
        /// Users and their bcrypt hashes (`htpasswd -B`); needs --access.
        #[arg(long, requires = "access")]
        htpasswd: Option<PathBuf>,
        /// Who may pull or push where, one `user right prefix` rule a line
        /// (see server/src/auth.rs); needs --htpasswd. Anonymous without both.
        #[arg(long, requires = "htpasswd")]
        access: Option<PathBuf>,
        /// Answer blob GETs with a 307 to a presigned URL of the bucket's
        /// object, valid this long (e.g. 5m), so layer bytes do not flow
        /// through the registry. `--backend s3` and the blobstore layout only.
        #[arg(long, value_parser = parse_duration)]
        redirect_blobs: Option<std::time::Duration>,
        /// UNSAFE, reproduces zot #4337: lets several instances serve one
        /// root, each with its metadata in its own memory and its locks in
        /// its own process. Nothing coordinates them: two tag pushes into
        /// one repository through two instances can both be acknowledged
        /// while one tag is lost. For tests and demonstrations only.
        #[arg(long)]
        unsafe_shared_root: bool,
    },
}

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Store(StoreError),
    Findings(usize),
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        CliError::Store(e)
    }
}

impl From<engine::meta::MetaError> for CliError {
    fn from(e: engine::meta::MetaError) -> CliError {
        CliError::Store(e.into())
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Findings(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Store(e) => match e.code() {
                Some(
                    ErrorCode::BlobUnknown
                    | ErrorCode::ManifestUnknown
                    | ErrorCode::NameUnknown
                    | ErrorCode::BlobUploadUnknown,
                ) => 3,
                Some(ErrorCode::Denied) => 4,
                Some(_) => 2,
                None => 5,
            },
        }
    }

    fn message(&self) -> String {
        match self {
            CliError::Usage(m) => m.clone(),
            CliError::Findings(n) => format!("fsck: {n} problem(s) found"),
            CliError::Store(e) => match e.code() {
                Some(code) => format!("{}: {e}", code.as_str()),
                None => e.to_string(),
            },
        }
    }
}

/// `90s`, `30m`, `1h`, `2d`, or plain seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// `REPO`, `REPO:TAG` or `REPO@DIGEST`.
fn parse_target(s: &str) -> Result<(RepoName, Option<Reference>), CliError> {
    let (repo, reference) = if let Some((repo, digest)) = s.split_once('@') {
        (
            repo,
            Some(Reference::Digest(
                Digest::parse(digest).map_err(StoreError::from)?,
            )),
        )
    } else if let Some((repo, tag)) = s.rsplit_once(':') {
        (
            repo,
            Some(Reference::Tag(Tag::parse(tag).map_err(StoreError::from)?)),
        )
    } else {
        (s, None)
    };
    Ok((RepoName::parse(repo).map_err(StoreError::from)?, reference))
}

fn need_reference(s: &str, r: Option<Reference>) -> Result<Reference, CliError> {
    r.ok_or_else(|| CliError::Usage(format!("{s:?}: expected REPO:TAG or REPO@DIGEST")))
}

fn need_digest(s: &str, r: Option<Reference>) -> Result<Digest, CliError> {
    match r {
        Some(Reference::Digest(d)) => Ok(d),
        _ => Err(CliError::Usage(format!("{s:?}: expected REPO@DIGEST"))),
    }
}

fn print(json: bool, value: serde_json::Value, text: impl FnOnce() -> String) {
    if json {
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
    } else {
        let text = text();
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.json;
    match cli.command {
        Command::Init { layout, policy } => {
            let store = root::init(&cli.root, StoreConfig { layout, policy }).await?;
            let c = store.config();
            print(
                json,
                json!({"root": cli.root.root, "layout": c.layout.as_str(), "policy": c.policy.as_str()}),
                || {
                    format!(
                        "initialised {} (layout {}, policy {})",
                        cli.root.root.display(),
                        c.layout,
                        c.policy
                    )
                },
            );
        }
        Command::Import { target, dir } => {
            let (repo, reference) = parse_target(&target)?;
            let tag = match reference {
                None => None,
                Some(Reference::Tag(t)) => Some(t),
                Some(Reference::Digest(_)) => {
                    return Err(CliError::Usage("import takes REPO or REPO:TAG".into()));
                }
            };
            let store = root::open(&cli.root).await?;
            let report = oci_dir::import(&store, &repo, tag.as_ref(), &dir).await?;
            print(json, serde_json::to_value(&report).expect("json"), || {
                format!(
                    "imported {} manifest(s) into {} (tags: {}); {} blob(s) uploaded ({} bytes), {} already present",
                    report.manifests,
                    report.repo,
                    report.tags.join(", "),
                    report.blobs_uploaded,
                    report.bytes_uploaded,
                    report.blobs_already_present
                )
            });
        }
        Command::Export { target, dir } => {
            let (repo, reference) = parse_target(&target)?;
            let reference = need_reference(&target, reference)?;
            let store = root::open(&cli.root).await?;
            let report = oci_dir::export(&store, &repo, &reference, &dir).await?;
            print(json, serde_json::to_value(&report).expect("json"), || {
                format!(
                    "exported {} ({}) to {}: {} blob(s), {} bytes",
                    report.manifest,
                    report.media_type,
                    dir.display(),
                    report.blobs,
                    report.bytes
                )
            });
        }
        Command::Ls => {
            let store = root::open(&cli.root).await?;
            let repos: Vec<String> = store
                .repositories()
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            print(json, json!(repos), || repos.join("\n"));
        }
        Command::Tags { repo } => {
            let repo = RepoName::parse(&repo).map_err(StoreError::from)?;
            let store = root::open(&cli.root).await?;
            let tags: Vec<String> = store
                .tags(&repo, None, None)
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            print(json, json!(tags), || tags.join("\n"));
        }
        Command::Rm { target } => {
            let (repo, reference) = parse_target(&target)?;
            let reference = need_reference(&target, reference)?;
            let store = root::open(&cli.root).await?;
            store.delete_manifest(&repo, &reference).await?;
            print(json, json!({"deleted": target}), || {
                format!("deleted {target}")
            });
        }
        Command::RmBlob { target } => {
            let (repo, reference) = parse_target(&target)?;
            let digest = need_digest(&target, reference)?;
            let store = root::open(&cli.root).await?;
            store.delete_blob(&repo, &digest).await?;
            print(json, json!({"deleted": target}), || {
                format!("deleted {target}")
            });
        }
        Command::Cat { target } => {
            let (repo, reference) = parse_target(&target)?;
            let digest = need_digest(&target, reference)?;
            let store = root::open(&cli.root).await?;
            let data = store.get_blob(&repo, &digest).await?;
            use std::io::Write;
            std::io::stdout()
                .write_all(&data)
                .map_err(|e| CliError::Usage(format!("writing to stdout: {e}")))?;
        }
        Command::Fsck => {
            let store = root::open(&cli.root).await?;
            let findings = store.fsck().await?;
            let errors = findings.iter().filter(|f| f.is_error()).count();
            print(
                json,
                json!({"errors": errors, "findings": findings}),
                || {
                    let mut lines: Vec<String> = findings.iter().map(ToString::to_string).collect();
                    lines.push(format!(
                        "fsck: {errors} error(s), {} note(s)",
                        findings.len() - errors
                    ));
                    lines.join("\n")
                },
            );
            if errors > 0 {
                return Err(CliError::Findings(errors));
            }
        }
        Command::Migrate => {
            let driver = root::driver(&cli.root)?;
            let meta = root::meta(&cli.root).await?;
            let bar = (!json).then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "migrating {bar:40} {pos}/{len} repositories ({elapsed})",
                    )
                    .expect("valid template"),
                );
                bar
            });
            let tick = |done: usize, total: usize| {
                if let Some(bar) = &bar {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                }
            };
            let report = if cli.root.shared.meta_postgres.is_some() {
                // Shared metadata: one migrator at a time, under a lease.
                let holder = format!("ocistore-migrate-{}", std::process::id());
                engine::migrate::migrate_in_place_shared(driver, meta, &tick, &holder).await?
            } else {
                engine::migrate::migrate_in_place(driver, meta, &tick).await?
            };
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            print(json, serde_json::to_value(&report).expect("json"), || {
                let mut lines = vec![format!(
                    "migration {}: {} repositories ({} migrated now, {} by an earlier run); {} relinked, {} copied ({} bytes); {} markers and {} legacy objects removed",
                    if report.completed {
                        "complete"
                    } else {
                        "incomplete"
                    },
                    report.repos_total,
                    report.repos_migrated,
                    report.repos_already_done,
                    report.blobs_relinked,
                    report.blobs_copied,
                    report.bytes_copied,
                    report.markers_removed,
                    report.legacy_objects_removed
                )];
                lines.extend(report.problems.iter().map(|p| format!("problem: {p}")));
                lines.join("\n")
            });
        }
        Command::Sync {
            from,
            to,
            to_s3_prefix,
        } => {
            if cli.root.backend == root::Backend::S3
                && (to_s3_prefix.is_none() || to_s3_prefix == cli.root.s3.s3_prefix)
            {
                return Err(CliError::Usage(
                    "sync on s3 needs --to-s3-prefix, different from --s3-prefix".into(),
                ));
            }
            let old = root::open(&RootArgs {
                root: from,
                shared: root::SharedArgs::alone(),
                ..cli.root.clone()
            })
            .await?;
            let new_args = RootArgs {
                root: to,
                backend: cli.root.backend,
                shared: root::SharedArgs::alone(),
                s3: root::S3Args {
                    s3_prefix: to_s3_prefix,
                    ..cli.root.s3.clone()
                },
            };
            let new_config = StoreConfig {
                layout: LayoutKind::Blobstore,
                policy: LockPolicy::Striped,
            };
            let new = match engine::Store::stored_config(&*root::driver(&new_args)?).await? {
                Some(_) => root::open(&new_args).await?,
                None => root::init(&new_args, new_config).await?,
            };
            let report = engine::migrate::sync::sync_stores(&old, &new).await?;
            print(json, serde_json::to_value(&report).expect("json"), || {
                let mut lines = vec![format!(
                    "sync: {} repositories; copied {} manifest(s), {} blob(s) ({} bytes); {} blob(s) already present",
                    report.repos,
                    report.manifests_copied,
                    report.blobs_copied,
                    report.bytes_copied,
                    report.blobs_already_present
                )];
                lines.extend(report.problems.iter().map(|p| format!("problem: {p}")));
                lines.extend(report.differences.iter().map(|d| format!("differs: {d}")));
                lines.push(if report.equal() {
                    "compare: equal, safe to cut over".into()
                } else {
                    "compare: DIFFERENT".into()
                });
                lines.join("\n")
            });
            if !report.equal() {
                return Err(CliError::Findings(report.differences.len()));
            }
        }
        Command::Gc { delay, dry_run } => {
            let store = root::open(&cli.root).await?;
            let report = store
                .gc(engine::gc::GcOptions {
                    dry_run,
                    ..engine::gc::GcOptions::new(delay)
                })
                .await?;
            print(json, serde_json::to_value(&report).expect("json"), || {
                use engine::gc::GcKind::*;
                let verb = if dry_run { "would remove" } else { "removed" };
                let mut lines: Vec<String> = report
                    .items
                    .iter()
                    .map(|i| {
                        format!(
                            "{verb} {:?} {} {}",
                            i.kind,
                            i.path
                                .as_deref()
                                .or(i.repo.as_deref())
                                .unwrap_or("_blobstore"),
                            i.digest.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                lines.push(format!(
                    "gc: {} repos scanned; {verb} {} manifest(s), {} blob reference(s), {} _blobstore blob(s), {} upload(s), {} repo(s), {} leftover(s); {} bytes freed in {:.1} ms",
                    report.repos_scanned,
                    report.count(Manifest),
                    report.count(Blob),
                    report.count(BlobstoreBlob),
                    report.count(Upload),
                    report.count(Repository),
                    report.count(Leftover),
                    report.bytes_freed,
                    report.pass_ns as f64 / 1e6
                ));
                if !report.deferred.is_empty() {
                    lines.push(format!(
                        "gc: the disk was too full to prune {} (their untagged manifests stay until a later pass)",
                        report.deferred.join(", ")
                    ));
                }
                lines.join("\n")
            });
        }
        Command::Serve {
            addr,
            gc_every,
            gc_delay,
            upload_timeout,
            htpasswd,
            access,
            redirect_blobs,
            unsafe_shared_root,
        } => {
            let access = match (htpasswd, access) {
                (Some(users), Some(rules)) => Some(std::sync::Arc::new(
                    server::auth::Access::from_files(&users, &rules).map_err(CliError::Usage)?,
                )),
                _ => None,
            };
            let store = if unsafe_shared_root {
                root::open_unsafe_shared(&cli.root).await?
            } else {
                root::open(&cli.root).await?
            };
            let redirect = match redirect_blobs {
                None => None,
                Some(_) if cli.root.backend != root::Backend::S3 => {
                    return Err(CliError::Usage(
                        "--redirect-blobs needs --backend s3".into(),
                    ));
                }
                Some(_) if store.config().layout != LayoutKind::Blobstore => {
                    return Err(CliError::Usage(
                        "--redirect-blobs needs the blobstore layout (a legacy root has markers): run `ocistore migrate` first".into(),
                    ));
                }
                Some(expires) => Some(server::redirect::BlobRedirect::new(
                    root::s3_driver(&cli.root)?,
                    expires,
                )),
            };
            let listener = server::bind(addr)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| CliError::Usage(format!("listening on {addr}: {e}")))?;
            tracing_subscriber::fmt()
                .with_target(false)
                .with_writer(std::io::stderr)
                .init();
            let c = store.config();
            tracing::info!(
                "serving {} (layout {}, policy {}) on http://{local}",
                cli.root.root.display(),
                c.layout,
                c.policy
            );
            let gc = gc_every.map(|every| {
                let opts = engine::gc::GcOptions::new(gc_delay).upload_timeout(upload_timeout);
                tracing::info!("gc every {every:?} (delay {gc_delay:?})");
                server::periodic_gc::spawn(store.clone(), every, opts)
            });
            let app = server::router_with(store, access);
            let app = match redirect {
                Some(redirect) => {
                    tracing::info!("blob GETs redirect to presigned URLs");
                    server::redirect::redirect_blob_gets(app, redirect)
                }
                None => app,
            };
            let served = server::serve_router(listener, app, server::shutdown_signal()).await;
            if let Some(gc) = gc {
                gc.abort();
            }
            served.map_err(|e| CliError::Usage(format!("serving on {local}: {e}")))?;
            tracing::info!("stopped");
        }
        Command::Stats => {
            let store = root::open(&cli.root).await?;
            let (mut manifests, mut tags, mut references, mut logical) =
                (0usize, 0usize, 0usize, 0u64);
            let mut unique: BTreeSet<(Digest, u64)> = BTreeSet::new();
            let repos = store.repositories().await?;
            for repo in &repos {
                tags += store.tags(repo, None, None).await?.len();
                for d in store.repo_blobs(repo).await? {
                    let Ok(size) = store.stat_blob(repo, &d).await else {
                        continue;
                    };
                    references += 1;
                    logical += size;
                    unique.insert((d, size));
                }
                manifests += store.manifest_count(repo).await?;
            }
            let stored: u64 = unique.iter().map(|(_, s)| s).sum();
            let calls = store.metrics().calls;
            let c = store.config();
            let value = json!({
                "layout": c.layout.as_str(), "policy": c.policy.as_str(),
                "repositories": repos.len(), "manifests": manifests, "tags": tags,
                "blob_references": references, "unique_blobs": unique.len(),
                "logical_bytes": logical, "stored_bytes": stored,
                "driver_calls": CallKind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(calls.get(*k)))).collect::<serde_json::Map<_, _>>(),
            });
            print(json, value, || {
                format!(
                    "layout {} policy {}\nrepositories {}\nmanifests {}\ntags {}\nblob references {}\nunique blobs {}\nlogical bytes {logical}\nstored bytes {stored} (dedupe saves {:.1}%)\ndriver calls for this report: {calls}",
                    c.layout,
                    c.policy,
                    repos.len(),
                    manifests,
                    tags,
                    references,
                    unique.len(),
                    if logical == 0 {
                        0.0
                    } else {
                        100.0 * (logical - stored) as f64 / logical as f64
                    }
                )
            });
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ocistore: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}
