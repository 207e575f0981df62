//! audiotext-core: what sqlite-audiotext does, without SQLite and without a training framework.
//! The extension (`sqlite-audiotext`) puts an SQL surface on it; the trainer (`audiotext-train`)
//! builds its bundles with the same front-end, so both hear a file the same way.
//!
//! - [`audio`]: the audio front-end: decode, mix down, resample, log-mel (no model).
//! - [`audio_encoder`]: `audio.onnx` over batches of windows, pooled per file.
//! - [`text`]: tokenization and text embedding.
//! - [`model`]: a bundle's `manifest.json` and ONNX Runtime sessions.
//! - [`bundle`]: a model bundle opened: its text encoder and its audio encoder.
//! - [`index`]: vector search kernels: vector BLOBs, quantized codes, SIMD kernels, the scan.
//! - [`error`]: the one error type, whose messages name the cause and the fix.
//! - [`regular_file`]: opening a user-named path only when it is a regular file.

pub mod audio;
pub mod audio_encoder;
pub mod bundle;
pub mod error;
pub mod index;
pub mod model;
pub mod regular_file;
pub mod text;

pub use bundle::Bundle;
pub use error::{Error, Result};
