//! `cargo run -p sim -- x.toml` on a plain build: the simulator only exists
//! when madsim is compiled with `--cfg madsim`, and stable Cargo cannot set
//! a cfg for one package. So the plain binary re-runs itself through cargo
//! with `--cfg madsim` added, in its own target dir (`target/madsim`), and
//! passes every argument and the exit code through (DESIGN §10).

use std::process::{Command, ExitCode};

pub fn relaunch() -> ExitCode {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push('\x1f');
    }
    flags.push_str("--cfg\x1fmadsim");
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "sim",
            "--target-dir",
            "target/madsim",
            "--",
        ])
        .args(std::env::args_os().skip(1))
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .status();
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(3) as u8),
        Err(e) => {
            eprintln!("sim: could not run cargo to build the madsim simulator: {e}");
            ExitCode::from(2)
        }
    }
}
