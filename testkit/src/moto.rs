//! A local S3 API for tests: `moto_server` on 127.0.0.1 (DESIGN §14).
//!
//! [`Moto::start`] runs one server on a free port for its owner and stops
//! it on drop; [`Moto::shared`] runs one per test process, stopped when
//! the process ends (the kernel kills it: `PR_SET_PDEATHSIG`, armed from
//! a thread that lives as long as the process). Each test takes a bucket
//! of its own ([`Moto::bucket`]), so tests sharing a server never meet.
//!
//! Once [`Moto::record`] is called, moto's recorder appends every request
//! it receives to a file (before handling it, so refused and failed
//! requests too: its access log on stderr leaves those out), and
//! [`Moto::requests`] counts what really reached the server, independently
//! of the driver's own counters. Off by default: it stores request bodies.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The version `.ci/run` installs into `target/venv-moto`.
pub const MOTO_VERSION: &str = "5.2.1";

/// Test credentials: moto accepts any, and explicit ones keep the client
/// from probing a cloud metadata address.
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";

/// A running `moto_server`.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
    /// moto's stderr, shown if it fails to start.
    log: tempfile::NamedTempFile,
    /// Where moto's recorder writes one JSON line per request.
    recording: tempfile::NamedTempFile,
}

/// `OCISTORE_MOTO_SERVER`, or the venv `.ci/run` creates; fails the test
/// with the install command when neither exists.
pub fn moto_server() -> PathBuf {
    let path = match std::env::var_os("OCISTORE_MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-moto/bin/moto_server"),
    };
    assert!(
        path.exists(),
        "{} is missing: create the venv from the workspace root with \
         `python3 -m venv target/venv-moto && target/venv-moto/bin/pip install -q 'moto[server]=={MOTO_VERSION}'` \
         (.ci/run does), or point OCISTORE_MOTO_SERVER at a moto_server",
        path.display()
    );
    path
}

impl Moto {
    /// Starts a server on a free loopback port and waits until it answers.
    pub fn start() -> Moto {
        let bin = moto_server();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let recording = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_RECORDER_FILEPATH", recording.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap());
        // Dies with the thread that started it, even if this process is killed.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = Moto {
            child,
            port,
            log,
            recording,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = moto.request("GET", "/", "")
                && status > 0
            {
                break;
            }
            if let Some(exit) = moto.child.try_wait().unwrap() {
                panic!(
                    "moto_server exited ({exit}) before answering: {}",
                    std::fs::read_to_string(moto.log.path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// One server for the whole test process.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<&'static Moto> = OnceLock::new();
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // PR_SET_PDEATHSIG fires when the starting *thread* ends: start
            // it from one that never does.
            std::thread::spawn(move || {
                tx.send(&*Box::leak(Box::new(Moto::start()))).unwrap();
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("moto_server started")
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket with a name no other test of this process uses.
    pub fn bucket(&self, hint: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let hint: String = hint
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .filter(|c| c.is_ascii_alphanumeric())
            .take(30)
            .collect();
        let name = format!(
            "t-{}-{}-{hint}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = self
            .request("PUT", &format!("/{name}"), "")
            .expect("bucket creation reaches moto");
        assert_eq!(status, 200, "creating bucket {name}");
        name
    }

    /// Starts recording requests (idempotent); [`Moto::requests`] counts
    /// from here on.
    pub fn record(&self) {
        let status = self
            .request("POST", "/moto-api/recorder/start-recording", "")
            .expect("moto's recorder answers");
        assert_eq!(status, 200, "starting moto's recorder");
    }

    /// HTTP requests the server has received while recording (every S3
    /// call is one).
    pub fn requests(&self) -> u64 {
        self.request_log().len() as u64
    }

    /// The requests received while recording, as `METHOD /path?query`.
    pub fn request_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.recording.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let entry: serde_json::Value = serde_json::from_str(l).ok()?;
                let url = entry["url"].as_str()?;
                let path = url.find("://").map_or(url, |i| {
                    let rest = &url[i + 3..];
                    rest.find('/').map_or("/", |j| &rest[j..])
                });
                Some(format!("{} {path}", entry["method"].as_str()?))
            })
            .collect()
    }

    /// One plain HTTP/1.1 request; the status code.
    fn request(&self, method: &str, path: &str, body: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
