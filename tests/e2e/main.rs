//! The OCI Distribution API end to end: `server` over a real engine on a
//! temporary root, spoken to over loopback. Cases written from the
//! distribution-spec v1.1 (spec.md): pull, push, content discovery, content
//! management, error cases, hostile requests, and round trips through real
//! clients (skopeo, the ORAS Python SDK) on both layouts.

mod auth;
mod differential;
mod discovery;
mod hostile;
mod management;
mod oci_client;
mod oras;
mod pull;
mod push;
mod redirect;
mod restart;
mod skopeo;
