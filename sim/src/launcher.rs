//! `cargo run -p sim -- x.toml` on a plain build: the simulator only exists
//! when madsim is compiled with `--cfg madsim`, and stable Cargo cannot set
//! a cfg for one package. So the plain binary re-runs itself through cargo
//! with `--cfg madsim` added, in its own target dir (`target/madsim`), and
//! passes every argument and the exit code through (DESIGN §10).
//!
//! It builds with the `sim` profile (release, whole-program LTO, one
//! codegen unit) and for this machine's CPU: the binary is built where it
//! runs, and only ever runs there. Neither changes a result: the
//! final-state hashes of every scenario are the same as a plain release
//! build's (checked when this was introduced); they change how much CPU a
//! run costs (README, "sim speed, one run on one thread").

use std::process::{Command, ExitCode};

pub fn relaunch() -> ExitCode {
    let workspace = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push('\x1f');
    }
    flags.push_str("--cfg\x1fmadsim\x1f-C\x1ftarget-cpu=native");
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "run",
            "--quiet",
            "--profile",
            "sim",
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
