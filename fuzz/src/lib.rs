//! The library's modules that parse untrusted bytes, compiled from ../src by path under the same
//! module paths (`crate::audio::decode`, `crate::error`, ...), so the fuzz targets exercise the
//! extension's own code without building its SQLite, tokenizer and ONNX layers.

#[path = "../../src/error.rs"]
pub mod error;

pub use error::{Error, Result};

#[path = "../../src/regular_file.rs"]
pub mod regular_file;

pub mod audio;
pub mod model;
pub mod sql;
