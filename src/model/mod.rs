//! model
pub mod manifest;
