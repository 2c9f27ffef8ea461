//! Images: references, the content-addressed store, unpacking layers for
//! overlayfs, and importing archives (pulling from registries comes with
//! the puller).

pub mod import;
pub mod reference;
pub mod store;
pub mod unpack;

#[cfg(test)]
mod tests;

pub use import::{Platform, import};
pub use reference::ImageRef;
pub use store::{Image, ImageStore};
