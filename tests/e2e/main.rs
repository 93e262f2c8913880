//! The OCI Distribution API end to end: `server` over a real engine on a
//! temporary root, spoken to over loopback. Cases written from the
//! distribution-spec v1.1 (spec.md): pull, push, content discovery, content
//! management, error cases, hostile requests, and a skopeo round trip.

mod auth;
mod discovery;
mod hostile;
mod management;
mod pull;
mod push;
mod skopeo;
