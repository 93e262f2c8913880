//! The OCI side of the store: names, references, manifests, descriptors.

pub(crate) mod index_rows;
pub mod manifest;
pub mod names;

pub use manifest::{Descriptor, ImageIndex, Manifest, ManifestKind, REF_NAME, media};
pub use names::{NameError, Reference, RepoName, Tag};
