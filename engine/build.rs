//! `OCISTORE_MUTATION=<name>` builds the engine with one known concurrency
//! bug injected, for the loom suite's mutation checks (engine/tests/loom.rs).
//! An env var rather than RUSTFLAGS, so only this crate rebuilds: the
//! dependencies' builds are shared across mutations.

const MUTATIONS: [&str; 4] = [
    "inverted_order",
    "sweep_without_recheck",
    "split_dedupe",
    "gc_without_touch_recheck",
];

fn main() {
    println!("cargo::rerun-if-env-changed=OCISTORE_MUTATION");
    println!(
        "cargo::rustc-check-cfg=cfg(ocistore_mutation, values(none(), \"{}\"))",
        MUTATIONS.join("\", \"")
    );
    match std::env::var("OCISTORE_MUTATION") {
        Ok(m) if m.is_empty() => {}
        Ok(m) if MUTATIONS.contains(&m.as_str()) => {
            // The bare name too: `--cfg k="v"` alone leaves `cfg(k)` false,
            // and `cfg(not(ocistore_mutation))` must mean "no mutation".
            println!("cargo::rustc-cfg=ocistore_mutation");
            println!("cargo::rustc-cfg=ocistore_mutation=\"{m}\"");
            println!("cargo::warning=engine built with mutation {m}: for the loom suite only");
        }
        Ok(m) => panic!("OCISTORE_MUTATION={m:?} is not one of {MUTATIONS:?}"),
        Err(_) => {}
    }
}
