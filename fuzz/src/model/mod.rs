//! ../src/model's manifest.

#[path = "../../../src/model/manifest.rs"]
pub mod manifest;
