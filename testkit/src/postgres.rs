//! A throwaway PostgreSQL cluster for one test: `initdb` into a temporary
//! directory, `pg_ctl start` listening on a unix socket in that directory
//! only (no TCP port to collide with), stopped and deleted on drop.
//!
//! The binaries come from Debian's `postgresql` package (found on `PATH` or
//! under `/usr/lib/postgresql/<version>/bin`); the test fails, saying how to
//! install them, when they are missing. PostgreSQL refuses to run as root:
//! as root (CI), the cluster is owned by and run as the `postgres` user the
//! package creates, through `runuser`.
//!
//! `fsync=off`: the tests kill registry instances, never the database, so
//! the cluster's own durability is not under test and costs only time.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster; `conninfo` reaches it as its superuser `ocistore`.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the server's tools as this user (root cannot run them).
    run_as: Option<String>,
    running: bool,
}

/// The socket's port number: only names the socket file, nothing listens on TCP.
const PORT: u16 = 5432;
const INSTALL: &str =
    "install PostgreSQL's server with `apt-get install -y postgresql` (Debian/Ubuntu)";

impl Postgres {
    /// Creates and starts a cluster; fails the test if it cannot.
    pub fn start() -> Postgres {
        let bin = server_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("ocistore-pg")
            .tempdir()
            .expect("tempdir");
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            chown_to(dir.path(), user);
        }
        let mut pg = Postgres {
            dir,
            bin,
            run_as,
            running: false,
        };
        pg.tool(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-A",
                "trust",
                "-U",
                "ocistore",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let options = format!(
            "-k {} -p {PORT} -c listen_addresses='' -c fsync=off -c max_connections=300",
            pg.socket_dir().display()
        );
        let log = pg.dir.path().join("server.log");
        pg.tool(
            "pg_ctl",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "start",
            ],
        );
        pg.running = true;
        pg
    }

    /// A libpq connection string for database `postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={PORT} user=ocistore dbname=postgres",
            self.socket_dir().display()
        )
    }

    /// Runs `sql` with `psql` as the superuser; its rows, one a line,
    /// columns separated by `|`.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.conninfo(),
                "-c",
                sql,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}; {INSTALL}"));
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn tool(&self, name: &str, args: &[&str]) {
        let exe = self.bin.join(name);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", exe.display()));
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{name} {args:?} failed: {}{}\nserver log:\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data().display().to_string();
            self.tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`.
fn server_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    }) {
        // A link on PATH (as /usr/local/bin/initdb can be) leads to the
        // directory holding the other tools too (psql).
        return std::fs::canonicalize(dir.join("initdb"))
            .ok()
            .and_then(|initdb| initdb.parent().map(Path::to_path_buf))
            .unwrap_or(dir);
    }
    // Debian keeps the server's tools off PATH, one directory per version.
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("initdb not found on PATH nor under /usr/lib/postgresql: {INSTALL}")
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown_to(path: &Path, user: &str) {
    let name = std::ffi::CString::new(user).expect("no NUL");
    // SAFETY: getpwnam reads a valid C string and returns a pointer to
    // static storage or null; read at once, before any other call.
    let ids = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        (!pw.is_null()).then(|| ((*pw).pw_uid, (*pw).pw_gid))
    };
    let (uid, gid) = ids.unwrap_or_else(|| {
        panic!("running as root, PostgreSQL needs the `{user}` user to run as: {INSTALL} (it creates the user)")
    });
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown the cluster's directory");
}
