//! The trainer: `audiotext-train` subcommands.
//!
//! - [`export_text`]: a sentence-transformers text model (BERT family) becomes a model bundle
//!   (`text.onnx`, `tokenizer.json`, `manifest.json`).
//! - [`weights`]: safetensors reading (F32, F16, BF16, F64 as f32).

pub mod export_text;
pub mod weights;

pub use export_text::{export_text, ExportTextOptions, ExportTextReport};
