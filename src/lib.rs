//! sqlite-audiotext: search sound with words inside SQLite.
//!
//! The crate builds two things from one source tree:
//! - `audiotext0`, a loadable SQLite extension (`.load ./audiotext0`) that embeds text and audio
//!   with ONNX encoders run by ONNX Runtime and searches the vectors with sqlite-vec;
//! - `audiotext-train`, the companion trainer that builds the model bundles the extension loads
//!   (feature `trainer`: without it nothing of the training framework is compiled).
//!
//! Layout:
//! - [`sql`]: the SQL surface: one registration table, argument parsing, one file per family.
//! - [`model`]: model bundles (`manifest.json` + ONNX files) and ONNX Runtime sessions.
//! - [`audio`]: the audio front-end: decode, mix down, resample, log-mel.
//! - [`text`]: tokenization and text embedding.
//! - [`index`]: vector search without SQLite: quantized codes, SIMD kernels, the parallel scan.
//! - [`onnx`]: a small ONNX protobuf writer used by the trainer's exporters.
//! - `train` (feature `trainer`): the trainer's data, checkpoints and exporters.

pub mod audio;
pub mod error;
pub mod index;
pub mod model;
pub mod onnx;
pub mod regular_file;
pub mod sql;
pub mod text;
#[cfg(feature = "trainer")]
pub mod train;

pub use error::{Error, Result};
