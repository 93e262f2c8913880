//! CNCF distribution 2.8.2 (Debian's `docker-registry`) as a child
//! process on a loopback port, with the filesystem driver in a temporary
//! directory and deletes enabled: the differential oracle of
//! `tests/e2e/differential.rs` and the peer of the `serve` bench.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs it; `OCISTORE_DOCKER_REGISTRY` overrides.
const DEFAULT_BINARY: &str = "/usr/bin/docker-registry";
/// How `.ci/run` installs it.
pub const INSTALL: &str = "apt-get install -y docker-registry";

/// A running `docker-registry`, killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Distribution {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// The binary, or a panic saying how to install it (tests never skip).
pub fn binary() -> PathBuf {
    let path = std::env::var_os("OCISTORE_DOCKER_REGISTRY")
        .map_or_else(|| PathBuf::from(DEFAULT_BINARY), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: install CNCF distribution 2.8 with `{INSTALL}` (.ci/run does), \
         or point OCISTORE_DOCKER_REGISTRY at a `registry` binary",
        path.display()
    );
    path
}

/// A free loopback port (bound then released: another process could take
/// it in between, which on a test machine is rare and fails loudly).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Polls `addr` with `GET /v2/` until it answers, for at most 20 s;
/// `alive` reports the server's exit (then the wait fails at once).
pub fn wait_until_serving(addr: SocketAddr, mut alive: impl FnMut() -> Result<(), String>) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Err(e) = alive() {
            panic!("the server on {addr} exited before serving: {e}");
        }
        if let Ok(mut conn) = std::net::TcpStream::connect(addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let request = format!("GET /v2/ HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            let mut answer = [0u8; 12];
            if conn.write_all(request.as_bytes()).is_ok()
                && conn.read_exact(&mut answer).is_ok()
                && answer.starts_with(b"HTTP/1.1 ")
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the server on {addr} did not answer GET /v2/ within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Distribution {
    /// Starts it and waits until `GET /v2/` answers.
    pub fn start() -> Distribution {
        let binary = binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(&config, config_yml(&dir.path().join("data"), addr)).expect("config.yml");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let log_path = dir.path().join("registry.log");
        wait_until_serving(addr, || match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{status}; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )),
            Err(e) => Err(e.to_string()),
        });
        Distribution { addr, dir, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> crate::Client {
        crate::Client::new(self.addr)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's shipped configuration (filesystem driver, in-memory blob
/// descriptor cache, deletes on), without auth, on `addr`, quiet, and
/// without the background upload purge.
fn config_yml(data: &Path, addr: SocketAddr) -> String {
    format!(
        "version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
",
        data.display()
    )
}
