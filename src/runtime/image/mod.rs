//! Images: references, the content-addressed store, unpacking layers for
//! overlayfs, importing archives and pulling from registries.

#![forbid(unsafe_code)]

pub mod import;
pub mod pull;
pub mod reference;
pub mod store;
pub mod unpack;

#[cfg(test)]
mod tests;

pub use import::{Platform, import};
pub use pull::{PullSecrets, Puller, Registries};
pub use reference::ImageRef;
pub use store::{Image, ImageStore};
