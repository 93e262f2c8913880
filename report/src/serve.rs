//! The section on `ocistore serve` against CNCF distribution 2.8.2 over
//! HTTP (`cargo bench -p e2e --bench serve`, `serve.json`): the side-by-side
//! table, the ratio at 16 clients, and the three targets, each
//! judged from the measured figures.

use std::fmt::Write as _;

use serde_json::Value;

use crate::inputs::Inputs;
use crate::page::{esc, f, missing, num};

/// The servers the ratio compares.
pub const STRIPED: &str = "ocistore-striped";
pub const DISTRIBUTION: &str = "distribution-2.8.2";
/// Push throughput of `striped` over distribution's at 16 clients.
pub const PUSH_RATIO_TARGET: f64 = 2.0;
pub const RATIO_CLIENTS: u64 = 16;
/// Extra RSS allowed for a 1 GiB blob pushed and pulled.
pub const EXTRA_RSS_TARGET_MIB: f64 = 64.0;
pub const BIG_BLOB_TARGET_BYTES: u64 = 1 << 30;
const MIB: f64 = 1024.0 * 1024.0;
const COMMAND: &str = "cargo build --release -p ocistore && cargo bench -p e2e --bench serve";

fn server<'a>(serve: &'a Value, name: &str) -> Option<&'a Value> {
    serve["servers"]
        .as_array()?
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
}

fn level<'a>(serve: &'a Value, name: &str, clients: u64) -> Option<&'a Value> {
    server(serve, name)?["levels"]
        .as_array()?
        .iter()
        .find(|l| l["clients"].as_u64() == Some(clients))
}

fn measured(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `striped`'s push MB/s over distribution's, both at 16 clients.
pub fn push_ratio(inputs: &Inputs) -> Option<f64> {
    let serve = inputs.serve.as_ref()?;
    let mbps = |name| measured(f(&level(serve, name, RATIO_CLIENTS)?["push"], "mb_per_s"));
    Some(mbps(STRIPED)? / mbps(DISTRIBUTION)?)
}

/// Seconds to push the 16 images with 16 clients, and with one client
/// (one after another).
pub fn concurrent_and_sequential(inputs: &Inputs, name: &str) -> Option<(f64, f64)> {
    let serve = inputs.serve.as_ref()?;
    let secs = |clients| measured(f(&level(serve, name, clients)?["push"], "seconds"));
    Some((secs(16)?, secs(1)?))
}

/// The big blob's size and the server's extra RSS for it, in bytes.
pub fn big_blob_extra_rss(inputs: &Inputs, name: &str) -> Option<(u64, u64)> {
    let big = &server(inputs.serve.as_ref()?, name)?["big_blob"];
    Some((big["bytes"].as_u64()?, big["extra_rss_bytes"].as_u64()?))
}

fn verdict(met: bool) -> &'static str {
    if met {
        "<span class=\"ok\">met</span>"
    } else {
        "<span class=\"bad\">NOT met</span>"
    }
}

pub fn section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2><code>ocistore serve</code> against CNCF distribution 2.8.2 over HTTP</h2>");
    let Some(serve) = &inputs.serve else {
        page.push_str(&missing("the HTTP side-by-side", COMMAND));
        return;
    };
    let w = &serve["workload"];
    let mib = |key: &str| num(f(w, key) / MIB);
    let _ = write!(
        page,
        "<p>{}{} images, each {} shared base layers of {} MiB and {} own layers of {} MiB ({} MiB an image), \
         each pushed to its own repository on a fresh server per client count; client <i>i</i> of <i>n</i> \
         takes images <i>i</i>, <i>i+n</i>, ... One client is the 16 pushed one after another. The same hyper \
         client for every server pushes like Docker (HEAD each blob; POST, one streamed PATCH, PUT for the \
         missing; the manifest), layers one after another, then pulls everything back. Servers are child \
         processes on loopback: <code>ocistore serve</code> (release build, <code>fs</code>, blobstore layout) and \
         Debian's <code>docker-registry</code> (filesystem driver, which does not fsync); peak RSS is the \
         process's <code>VmHWM</code>. {} round(s), the servers taking turns at each client count within a round; \
         throughput is the median round's, p99 is over every image of every round.</p>",
        if serve["quick"].as_bool() == Some(true) {
            "<b>Quick run (small sizes).</b> "
        } else {
            ""
        },
        f(w, "images"),
        f(w, "base_layers"),
        mib("base_layer_bytes"),
        f(w, "own_layers"),
        mib("own_layer_bytes"),
        mib("image_bytes"),
        serve["rounds"].as_u64().unwrap_or(1),
    );
    page.push_str(
        "<table><tr><th>server</th><th>clients</th><th>push MB/s</th><th>push images/s</th><th>push p99 ms</th>\
         <th>pull MB/s</th><th>pull images/s</th><th>pull p99 ms</th><th>peak RSS MiB</th></tr>",
    );
    for s in serve["servers"].as_array().into_iter().flatten() {
        for l in s["levels"].as_array().into_iter().flatten() {
            let (push, pull) = (&l["push"], &l["pull"]);
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(s["name"].as_str().unwrap_or("?")),
                f(l, "clients"),
                num(f(push, "mb_per_s")),
                num(f(push, "images_per_s")),
                num(f(push, "p99_ms")),
                num(f(pull, "mb_per_s")),
                num(f(pull, "images_per_s")),
                num(f(pull, "p99_ms")),
                num(f(l, "peak_rss_bytes") / MIB),
            );
        }
    }
    page.push_str("</table>");

    page.push_str("<ul>");
    match push_ratio(inputs) {
        Some(r) => {
            let pull = level(serve, STRIPED, RATIO_CLIENTS)
                .zip(level(serve, DISTRIBUTION, RATIO_CLIENTS))
                .map(|(a, b)| f(&a["pull"], "mb_per_s") / f(&b["pull"], "mb_per_s"));
            let _ = write!(
                page,
                "<li>At {RATIO_CLIENTS} clients <code>{STRIPED}</code> pushes <b>{}×</b> distribution's MB/s \
                 (target ≥ {PUSH_RATIO_TARGET}×): {}; it pulls {}× distribution's.</li>",
                num(r),
                verdict(r >= PUSH_RATIO_TARGET),
                pull.map_or("–".into(), num),
            );
        }
        None => page.push_str("<li>Push ratio at 16 clients: not measured in this run.</li>"),
    }
    for s in serve["servers"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or("?");
        if let Some((concurrent, sequential)) = concurrent_and_sequential(inputs, name) {
            let judged = if name == STRIPED {
                format!(" (target: faster): {}", verdict(concurrent < sequential))
            } else {
                String::new()
            };
            let _ = write!(
                page,
                "<li><code>{}</code>: 16 concurrent pushes took {} s, the same 16 one after another {} s{judged}.</li>",
                esc(name),
                num(concurrent),
                num(sequential),
            );
        }
    }
    page.push_str("</ul>");

    page.push_str(
        "<table><tr><th>one big blob</th><th>size MiB</th><th>chunked push MB/s</th><th>streamed push MB/s</th>\
         <th>pull MB/s</th><th>RSS before MiB</th><th>extra after chunked</th><th>extra after streamed</th>\
         <th>extra at the end MiB</th></tr>",
    );
    for s in serve["servers"].as_array().into_iter().flatten() {
        let b = &s["big_blob"];
        if b.is_null() {
            continue;
        }
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(s["name"].as_str().unwrap_or("?")),
            num(f(b, "bytes") / MIB),
            num(f(b, "chunked_push_mb_per_s")),
            num(f(b, "streamed_push_mb_per_s")),
            num(f(b, "pull_mb_per_s")),
            num(f(b, "rss_before_bytes") / MIB),
            num(f(b, "extra_rss_after_chunked_push_bytes") / MIB),
            num(f(b, "extra_rss_after_streamed_push_bytes") / MIB),
            num(f(b, "extra_rss_bytes") / MIB),
        );
    }
    page.push_str("</table>");
    match big_blob_extra_rss(inputs, STRIPED) {
        Some((bytes, extra)) => {
            let extra_mib = extra as f64 / MIB;
            let judged = if bytes >= BIG_BLOB_TARGET_BYTES {
                verdict(extra_mib <= EXTRA_RSS_TARGET_MIB).to_owned()
            } else {
                format!(
                    "not judged: this run's blob is {} MiB, not 1 GiB",
                    num(bytes as f64 / MIB)
                )
            };
            let _ = write!(
                page,
                "<p>The blob pushed twice (PATCHes of {} MiB with <code>Content-Range</code>; one streamed PATCH) and \
                 pulled: <code>{STRIPED}</code> peaked at <b>{} MiB</b> above its RSS before (target ≤ \
                 {EXTRA_RSS_TARGET_MIB} MiB for 1 GiB): {judged}.</p>",
                num(f(
                    &server(serve, STRIPED).map_or(Value::Null, |s| s["big_blob"].clone()),
                    "chunk_bytes"
                ) / MIB),
                num(extra_mib),
            );
        }
        None => page.push_str("<p>The big blob: not measured in this run.</p>"),
    }
}
