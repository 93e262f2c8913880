//! The section on several `ocistore serve` processes over one store
//! (`cargo bench -p ocistore --bench multi_instance`,
//! `multi_instance.json`): acknowledged tags lost by the unsafe mode beside
//! the shared one over the same workload, and push throughput of 1, 2 and 4
//! instances sharing PostgreSQL, labelled for what it measures on a machine
//! whose cores the instances share.

use std::fmt::Write as _;

use crate::inputs::Inputs;
use crate::page::{esc, f, missing, num};

pub const UNSAFE: &str = "unsafe-shared-root";
pub const SHARED: &str = "shared-postgres";
const COMMAND: &str = "cargo bench -p ocistore --bench multi_instance";

/// Tags acknowledged and acknowledged tags lost by `mode`, summed over its
/// runs, and the number of runs.
pub fn lost_tags(inputs: &Inputs, mode: &str) -> Option<(u64, u64, usize)> {
    let m = inputs.multi_instance.as_ref()?["lost_tags"]["modes"]
        .as_array()?
        .iter()
        .find(|m| m["mode"].as_str() == Some(mode))?;
    Some((
        m["acknowledged"].as_u64()?,
        m["lost"].as_u64()?,
        m["runs"].as_array()?.len(),
    ))
}

pub fn section(page: &mut String, inputs: &Inputs) {
    page.push_str("<h2>Several instances over one store</h2>");
    let Some(multi) = &inputs.multi_instance else {
        page.push_str(&missing("several instances over one store", COMMAND));
        return;
    };
    let quick = if multi["quick"].as_bool() == Some(true) {
        "<b>Quick run (one run per mode, one round).</b> "
    } else {
        ""
    };
    let lt = &multi["lost_tags"];
    let _ = write!(
        page,
        "<p>{quick}Lost tags (zot #4337): {} <code>ocistore serve</code> processes over one root (the \
         <code>object</code> backend on a directory), {} clients spread over them, each pushing {} images \
         (a config, a 4 KiB layer, a manifest by a tag of its own) one after another into one repository; \
         afterwards, the acknowledged (201) tags that the repository no longer lists. The unsafe mode \
         (<code>serve --unsafe-shared-root</code>) keeps in-process locks and each process's own view; the \
         shared mode keeps metadata and locks in PostgreSQL (<code>--meta-postgres</code>, DESIGN §15). \
         Same workload, {} fresh run(s) per mode.</p>",
        f(lt, "instances"),
        f(lt, "clients"),
        f(lt, "tags_per_client"),
        f(lt, "runs_per_mode"),
    );
    page.push_str(
        "<table><tr><th>mode</th><th>runs</th><th>acknowledged</th><th>refused</th>\
         <th>acknowledged tags lost</th><th>lost per run</th></tr>",
    );
    for m in lt["modes"].as_array().into_iter().flatten() {
        let per_run: Vec<String> = m["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["lost"].to_string())
            .collect();
        let lost = f(m, "lost");
        let _ = write!(
            page,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"{}\">{}</span></td><td>{}</td></tr>",
            esc(m["mode"].as_str().unwrap_or("?")),
            per_run.len(),
            f(m, "acknowledged"),
            f(m, "refused"),
            if lost == 0.0 { "ok" } else { "bad" },
            lost,
            esc(&per_run.join(", ")),
        );
    }
    page.push_str("</table>");

    let tp = &multi["throughput"];
    let _ = write!(
        page,
        "<p>Push throughput: {} clients in all, spread over the instances, push {} images each (the same \
         small image shape) into {} shared repositories, on a fresh root and a fresh PostgreSQL cluster per \
         configuration; one instance alone (redb, in-process locks) on the same backend for comparison. \
         {} round(s), the configurations taking turns within a round; images/s from the median round, p99 \
         over every image of every round. <b>This machine has {} core(s) and every instance and PostgreSQL \
         run on them: more instances add no CPU, so the rows show what the shared state costs, not how \
         the service scales out.</b></p>",
        f(tp, "clients"),
        f(tp, "images_per_client"),
        f(tp, "repos"),
        f(tp, "rounds"),
        f(multi, "cores"),
    );
    page.push_str(
        "<table><tr><th>configuration</th><th>instances</th><th>push images/s</th>\
         <th>p50 ms</th><th>p99 ms</th></tr>",
    );
    for c in tp["configs"].as_array().into_iter().flatten() {
        let push = &c["push"];
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(c["name"].as_str().unwrap_or("?")),
            f(c, "instances"),
            num(f(push, "images_per_s")),
            num(f(push, "p50_ms")),
            num(f(push, "p99_ms")),
        );
    }
    page.push_str("</table>");
}
